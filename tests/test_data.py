import hashlib
import io
import json
import tarfile
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data_helpers import image_bytes, make_folder
from pea.data.buckets import BucketConfig, cover_and_crop, make_buckets, nearest_bucket
from pea.data.cache import Encoders, cache_features, load_null
from pea.layout import features_dir
from pea.data.harvest import HarvestConfig, harvest
from pea.data.index import indexed_shards
from pea.data.loader import BucketBatchLoader
from pea.data.records import features_batch, image_batch
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.tars import iter_samples, write_shard
from pea.data.translate import Translator, translate
from pea.errors import PeaError
from pea.features import TextFeatures
from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.models.tiny import ensure_built
from pea.presets import get_preset
from pea.progress import quiet
from pea.storage import Storage
from servers import serve_files

SMALL = BucketConfig(side=32, step=8, max_ratio=2.0, samples_per_shard=4)


class FakeTranslator:
    """Deterministic stand-in that records what it was asked (the real one is tested on tiny-mt below)."""

    def __init__(self):
        self.calls = []

    def __call__(self, texts, src, tgt):
        self.calls.append((tuple(texts), src, tgt))
        return [f"[{tgt}] {t}" for t in texts]


def test_sdxl_buckets_cover_both_orientations_with_sides_multiple_of_64():
    buckets = make_buckets(BucketConfig(side=1024))
    assert (1024, 1024) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(0.85 < w * h / 1024**2 < 1.15 for w, h in buckets)
    assert any(w > h for w, h in buckets) and any(h > w for w, h in buckets)
    assert nearest_bucket(1920, 1080, buckets)[0] > nearest_bucket(1920, 1080, buckets)[1]


def test_cover_and_crop_fills_the_bucket_and_reports_the_offset():
    image = Image.new("RGB", (300, 100))
    out, (top, left) = cover_and_crop(image, (128, 128))
    assert out.size == (128, 128)
    assert top == 0 and left == (384 - 128) // 2


def test_img2dataset_harvest_on_loopback_counts_the_bad_images(tmp_path, monkeypatch):
    files = {f"/ok{i}.jpg": image_bytes(200 + 10 * i, 160, (i * 40, 0, 0)) for i in range(4)}
    files["/corrupt.jpg"] = b"\xff\xd8\xff\xe0" + b"garbage" * 100
    files["/huge.png"] = image_bytes(5000, 5000, (0, 0, 0), "PNG")
    with serve_files(files) as base:
        rows = [(f"{base}/ok{i}.jpg", f"빨간 원 {i}", f"red circle {i}", "ko") for i in range(4)]
        rows += [(f"{base}/ok0.jpg", "赤い丸", "red circle", "ja"), (f"{base}/gone.jpg", "없음", "none", "ko"),
                 (f"{base}/corrupt.jpg", "깨짐", "broken", "ko"), (f"{base}/huge.png", "큰", "huge", "ko")]
        pq.write_table(pa.table({"URL": [r[0] for r in rows], "TEXT": [r[1] for r in rows],
                                 "ENG TEXT": [r[2] for r in rows], "LANGUAGE": [r[3] for r in rows],
                                 "WIDTH": [200] * len(rows), "HEIGHT": [160] * len(rows)}), tmp_path / "meta.parquet")
        storage = Storage(str(tmp_path / "root"))
        source = SourceSpec(name="laion", kind="laion-multi", uri=str(tmp_path / "meta.parquet"))
        manifest = harvest(storage, "ko", source, HarvestConfig(threads=4, retries=0, timeout_s=5,
                                                               max_image_area=4096**2))
    counts = manifest["counts"]
    assert counts["requested"] == 7 and counts["success"] == 4
    assert counts["HTTP Error 404: Not Found"] == 1
    assert counts["Image decoding error"] == 1 and counts["image area too large"] == 1
    samples = list(iter_samples(storage.open("ko", "raw", "laion", "00000.tar"), "t"))
    assert len(samples) == 4
    assert {json.loads(s["json"])["native"] for s in samples} == {f"빨간 원 {i}" for i in range(4)}
    opened = []
    monkeypatch.setattr(Storage, "open", lambda self, *parts: opened.append(parts))
    captions = translate(storage, "ko", "kor_Hang", "none", lambda: None)
    assert not opened  # the captions come from img2dataset's table of the shard, never from the images' tar
    table = pq.read_table(storage.path(captions["tables"][0])).to_pylist()
    assert sorted((r["key"], r["native"]) for r in table) == sorted(
        (s["__key__"], json.loads(s["json"])["native"]) for s in samples)


def test_a_metadata_parquet_without_a_column_names_it(tmp_path):
    pq.write_table(pa.table({"URL": ["http://127.0.0.1/x"], "TEXT": ["x"]}), tmp_path / "m.parquet")
    with pytest.raises(PeaError) as e:
        harvest(Storage(str(tmp_path / "r")), "ko", SourceSpec(name="l", kind="laion-multi", uri=str(tmp_path / "m.parquet")))
    assert "column 'ENG TEXT' is missing" in e.value.problem


@pytest.mark.parametrize("name", ["../../x.jpg", "/etc/x.jpg", "a/../../x.jpg"])
def test_unsafe_tar_member_paths_are_refused(tmp_path, name):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "bad.tar").write_bytes(buf.getvalue())
    with pytest.raises(PeaError, match="unsafe tar member path"):
        harvest(Storage(str(tmp_path / "r")), "ko", SourceSpec(name="w", kind="webdataset", uri=str(tmp_path / "bad.tar")))
    assert not (tmp_path / "r" / "ko" / "raw" / "w" / "00000.tar").exists()


def test_links_in_a_tar_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(PeaError, match="not a regular file"):
        list(iter_samples(io.BytesIO(buf.getvalue()), "t"))


def _prepare(storage, folder, translator=None):
    harvest(storage, "ko", SourceSpec(name="local", kind="folder", uri=str(folder)))
    translator = translator or FakeTranslator()
    manifest = translate(storage, "ko", "kor_Hang", "fake-mt", lambda: translator)
    return translator, manifest


def test_translation_fills_the_missing_side_once(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=9, english_only_every=3)
    storage = Storage(str(tmp_path / "root"))
    translator, manifest = _prepare(storage, folder)
    assert manifest["counts"] == {"parallel": 9, "culture": 0}
    assert len(translator.calls) == 1 and translator.calls[0][1:] == ("eng_Latn", "kor_Hang")
    assert len(translator.calls[0][0]) == 3
    table = pq.read_table(io.BytesIO(storage.read_bytes(manifest["tables"][0]))).to_pylist()
    assert sum(r["translated"] == "native" for r in table) == 3
    assert all(r["native"] for r in table)
    # a second language run over the same texts hits the cache; a re-run skips done tables
    storage.remove("ko", "captions")
    again = FakeTranslator()
    rerun = translate(storage, "ko", "kor_Hang", "fake-mt", lambda: again)
    assert rerun["this_run"] == {"translated": 0, "cached": 3, "copied": 0}
    assert again.calls == []


def test_the_real_translator_runs_a_local_seq2seq_model(model_cache):
    translator = Translator(str(ensure_built("tiny-mt", model_cache)))
    out = translator(["빨간 원", "파란 사각형", "초록 원"], "kor_Hang", "eng_Latn")
    assert len(out) == 3 and all(isinstance(t, str) for t in out)


def test_multilingual_copies_the_english_captions_and_never_loads_a_translation_model(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=4)
    for p in folder.glob("img???.txt"):
        p.unlink()  # English-only data, as the multilingual adapter trains on (paper Sec. 3.4)
    storage = Storage(str(tmp_path / "root"))
    harvest(storage, "multilingual", SourceSpec(name="local", kind="folder", uri=str(folder)))

    def load():
        raise AssertionError("the translation model was loaded")

    code = get_language("multilingual").translation.code
    manifest = translate(storage, "multilingual", code, "fake-mt", load)
    table = pq.read_table(io.BytesIO(storage.read_bytes(manifest["tables"][0]))).to_pylist()
    assert [r["native"] for r in table] == [r["english"] for r in table] and all(r["english"] for r in table)
    assert manifest["counts"] == {"parallel": 4, "culture": 0}
    assert manifest["this_run"] == {"translated": 0, "cached": 0, "copied": 4}


def test_culture_sources_are_not_translated(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=4)
    for p in folder.glob("*.en.txt"):
        p.unlink()
    storage = Storage(str(tmp_path / "root"))
    harvest(storage, "ko", SourceSpec(name="culture", kind="folder", uri=str(folder), culture=True))
    translator = FakeTranslator()
    manifest = translate(storage, "ko", "kor_Hang", "fake-mt", lambda: translator)
    assert manifest["counts"] == {"parallel": 0, "culture": 4} and translator.calls == []


def _keys(storage, lang, manifest):
    keys = []
    for s in indexed_shards(storage, (lang, "shards"), manifest):
        keys += [x["__key__"] for x in iter_samples(storage.open(lang, "shards", *s["path"].split("/")), "t")]
    return keys


def test_bucketing_drops_and_counts_broken_and_tiny_images(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=6)
    (folder / "img000.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "img001.jpg").write_bytes(image_bytes(4, 4, (0, 0, 0)))
    storage = Storage(str(tmp_path / "root"))
    _prepare(storage, folder)
    manifest = bucket(storage, "ko", SMALL)
    assert manifest["dropped"] == {"broken": 1, "too_large": 0, "tiny": 1, "no_caption": 0}
    assert manifest["samples"] == 4 and len(manifest["buckets"]) == 2
    for s in indexed_shards(storage, ("ko", "shards"), manifest):
        for x in iter_samples(storage.open("ko", "shards", *s["path"].split("/")), "t"):
            meta = json.loads(x["json"])
            assert Image.open(io.BytesIO(x["jpg"])).size == tuple(meta["bucket"]) == tuple(s["bucket"])
            assert meta["original_size"] in ([40, 48], [72, 40])


class Recorder(list):
    """A Progress that keeps (message, fraction) of every call."""

    def __call__(self, message: str, fraction: float | None = None) -> None:
        self.append((message, fraction))


def test_a_bucket_run_killed_half_way_resumes_without_redoing_or_duplicating(tmp_path):
    storage = Storage(str(tmp_path / "root"))
    for i in range(3):
        harvest(storage, "ko", SourceSpec(name=f"part{i}", kind="folder", uri=str(make_folder(tmp_path / f"i{i}", n=5))))
    translated = Recorder()
    translate(storage, "ko", "kor_Hang", "fake-mt", FakeTranslator, progress=translated)
    assert [f for _, f in translated] == [1 / 3, 2 / 3, 1.0]  # one caption table per raw shard

    def crash_after_first(name):
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        bucket(storage, "ko", SMALL, after_input=crash_after_first)
    assert not storage.exists("ko", "shards", "manifest.json")
    first = {p: (tmp_path / "root" / p).stat().st_mtime_ns for p in storage.glob("ko", "shards", "*", "*x*", "*.tar")}
    redone = Recorder()
    manifest = bucket(storage, "ko", SMALL, progress=redone)
    assert [f for _, f in redone] == [0.5, 1.0]  # the finished input was skipped: the fraction counts this run's work
    assert all((tmp_path / "root" / p).stat().st_mtime_ns == t for p, t in first.items())
    keys = _keys(storage, "ko", manifest)
    assert len(keys) == len(set(keys)) == 15 == manifest["samples"]


@pytest.fixture(scope="module")
def tiny_sdxl(model_cache):
    preset = get_preset("tiny-sdxl")
    pipe = load_pipeline(preset, model_cache)
    student = load_text_encoder(preset.student_for(get_language("ko")), model_cache)
    return Encoders(pipe.vae, TextFeatures(pipe, student), batch_size=5)


def _chain(storage, tmp_path, encoders, n=16, progress=quiet):
    _prepare(storage, make_folder(tmp_path / "imgs", n=n, english_only_every=4))
    shards = bucket(storage, "ko", SMALL)
    return shards, cache_features(storage, "ko", "tiny-sdxl", lambda: encoders, text=encoders.text is not None,
                                  progress=progress)


def _rows(storage, features):
    """The feature shards' index rows (pea.data.index)."""
    return indexed_shards(storage, features_dir("ko", "tiny-sdxl"), features)


def _check_loader(storage, features):
    make = lambda rank=0, world=1: BucketBatchLoader(  # noqa: E731
        storage, features_dir("ko", "tiny-sdxl"), _rows(storage, features), batch_size=2,
        collate=features_batch, rank=rank, world_size=world, seed=7, shuffle_buffer=3)
    full = list(make()())
    assert len(full) == make().batches_per_epoch() > 0
    for _, batch in full:
        assert len({tuple(t.tolist()[4:]) for t in batch.time_ids}) == 1  # one bucket per batch
        assert batch.latents.mean.dtype == batch.latents.std.dtype == torch.float32
        assert batch.text is None and len(batch.native) == 2  # captions, encoded in training
    assert [b.keys for _, b in make()()] == [b.keys for _, b in full]  # deterministic
    resumed = list(make()(full[1][0]))
    assert [b.keys for _, b in resumed] == [b.keys for _, b in full[2:]]
    ranks = [list(make(r, 2)()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [k for r in ranks for _, b in r for k in b.keys]
    assert len(seen) == len(set(seen))


def test_the_whole_chain_on_a_local_root(tmp_path, tiny_sdxl, monkeypatch):
    storage = Storage(str(tmp_path / "root"))
    cached, read = Recorder(), []
    read_bytes = Storage.read_bytes
    monkeypatch.setattr(Storage, "read_bytes", lambda self, *parts: read.append(parts) or read_bytes(self, *parts))
    shards, features = _chain(storage, tmp_path, Encoders(tiny_sdxl.vae, batch_size=5), progress=cached)
    assert features["source_digest"] == shards["digest"] and features["text_embeddings"] is False
    assert not [parts for parts in read if "features" in parts]  # hashed before the upload, never read back
    feature_rows, shard_rows = _rows(storage, features), indexed_shards(storage, ("ko", "shards"), shards)
    for s in feature_rows:
        data = read_bytes(storage, "ko", "features", "tiny-sdxl", *s["path"].split("/"))
        assert (s["sha256"], s["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
    n = len(feature_rows)
    assert features["index"]["shards"] == n
    assert cached == [(f"cached {s['path']}", i / n) for i, s in enumerate(shard_rows, 1)]
    assert [s["path"] for s in feature_rows] == [f"{features['key']}/{s['path']}" for s in shard_rows]
    _check_loader(storage, features)
    first = next(iter(BucketBatchLoader(storage, ("ko", "shards"), shard_rows, 2, image_batch)()))[1]
    assert first["images"].shape[0] == 2 and first["images"].min() >= -1


def test_the_text_embeddings_are_cached_only_when_asked_and_cost_most_of_the_bytes(tmp_path, tiny_sdxl):
    without = _chain(Storage(str(tmp_path / "a")), tmp_path / "a", Encoders(tiny_sdxl.vae, batch_size=5), n=8)[1]
    storage = Storage(str(tmp_path / "b"))
    with_text = _chain(storage, tmp_path / "b", tiny_sdxl, n=8)[1]
    assert with_text["text_embeddings"] is True
    # tiny-sdxl: 4x8x8 latents (x2: mean and std) against 77x64 + 64 + 77x32 + 77 text values a sample
    assert with_text["bytes_per_sample"] > 5 * without["bytes_per_sample"] > 0
    loader = BucketBatchLoader(storage, features_dir("ko", "tiny-sdxl"), _rows(storage, with_text), 2, features_batch)
    batch = next(iter(loader()))[1]
    assert batch.text["teacher_context"].shape[-1] == 64 and batch.text["teacher_pooled"].shape[0] == 2
    null = load_null(storage, "ko", "tiny-sdxl")
    # the encoded empty prompt, never SDXL's inference-time zeros (the KD step's CFG dropout needs a gradient)
    assert null.teacher_context.abs().sum() > 0 and null.student_mask.sum() > 0


def test_a_cached_latent_is_drawn_anew_from_its_distribution_at_every_visit(tmp_path, tiny_sdxl):
    storage = Storage(str(tmp_path / "root"))
    features = _chain(storage, tmp_path, Encoders(tiny_sdxl.vae, batch_size=5), n=4)[1]
    loader = BucketBatchLoader(storage, features_dir("ko", "tiny-sdxl"), _rows(storage, features), 2, features_batch)
    dist = next(iter(loader()))[1].latents
    assert (dist.std > 0).all()
    gen = torch.Generator().manual_seed(0)
    first, second = dist.sample(gen), dist.sample(gen)
    assert not torch.equal(first, second)
    assert torch.equal(dist.sample(torch.Generator().manual_seed(0)), first)  # the worker's generator decides


def test_features_of_an_older_pea_are_refused_with_the_fix(tmp_path):
    from safetensors.torch import save

    old = [{"__key__": "k", "safetensors": save({"latents": torch.zeros(4, 2, 2)}), "json": b"{}"}]
    with pytest.raises(PeaError, match="older pea") as e:
        features_batch(old)
    assert "pea cache" in e.value.fix


def test_a_shard_is_the_same_bytes_whenever_it_is_written(monkeypatch):
    samples = [{"__key__": "0001", "txt": "빨간 원".encode(), "jpg": b"jpeg"}]
    first = write_shard(samples)
    monkeypatch.setattr(time, "time", lambda: 2e9)  # written again, years later
    assert write_shard(samples) == first


@pytest.fixture
def s3_root(monkeypatch):
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="pea-test")
    try:
        yield "s3://pea-test/root", endpoint
    finally:  # moto keeps its buckets in this process across servers: the next test starts empty
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
        server.stop()


@pytest.mark.integration
def test_the_whole_chain_on_an_s3_endpoint(tmp_path, tiny_sdxl, s3_root):
    import fsspec

    root, endpoint = s3_root
    storage = Storage(root, endpoint_url=endpoint)
    try:
        shards, features = _chain(storage, tmp_path, Encoders(tiny_sdxl.vae, batch_size=5), n=12)
        assert storage.exists("ko", "shards", "manifest.json")
        assert not (tmp_path / "root").exists()
        _check_loader(storage, features)
    finally:
        fsspec.config.conf.pop("s3", None)
