"""The shard index (pea.data.index): the bucket and cache manifests stay a summary of a few hundred bytes at any
shard count, their shards are listed in a Parquet index beside the shards, and a resumed stage finds its finished
work with one listing of its folder (Storage.listing), never a request per shard."""

import hashlib
import time

import pytest
import test_data
from data_helpers import make_folder

from pea.data import shards as shards_module
from pea.data.buckets import BucketConfig
from pea.data.cache import Encoders, cache_features
from pea.data.harvest import harvest
from pea.data.index import FILE, digest, index_file, indexed_shards, read_index, write_index
from pea.data.parallel import in_process
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.errors import PeaError
from pea.layout import features_dir, shards_dir
from pea.storage import Storage

tiny_sdxl = test_data.tiny_sdxl  # the tiny VAE and text encoders, loaded once for this module
s3_root = test_data.s3_root  # the suite's moto S3 server on 127.0.0.1
SHARDS = 250_000
# Measured: 9.3 MB for 250 000 rows (`uv run pytest -q -s tests/test_shard_index.py -k 250k` prints it; pyarrow 25,
# zstd), of which 8.5 MB are the sha256s (32 random bytes each, which no codec shrinks); as JSON the rows are 48 MB.
INDEX_BYTES_AT_MOST = 12_000_000


def _rows(n: int) -> list[dict]:
    """n shards as the bucket stage records them, spread over 25 buckets, in no particular order."""
    sizes = [(w, 2048 * 512 // w // 64 * 64) for w in range(512, 2049, 64)]
    return [{"path": f"0123456789ab/{sizes[i % 25][0]}x{sizes[i % 25][1]}/laion-{i // 4:05d}-{i % 4:04d}.tar",
             "bucket": list(sizes[i % 25]), "samples": 1000 + i % 24,
             "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "bytes": 60_000_000 + i} for i in reversed(range(n))]


def test_the_manifest_stays_small_and_the_index_compact_at_250k_shards(tmp_path):
    storage, rows = Storage(str(tmp_path)), _rows(SHARDS)
    done = [{"shards": rows[i : i + 4], "dropped": {"broken": 1, "tiny": 0}} for i in range(0, SHARDS, 4)]
    manifest = shards_module._manifest(storage, "ko", BucketConfig(), "0123456789ab", done)
    storage.write_json(manifest, *shards_dir("ko"), "manifest.json")
    assert len(storage.read_bytes(*shards_dir("ko"), "manifest.json")) < 2048
    assert manifest["index"]["shards"] == SHARDS and manifest["samples"] == sum(r["samples"] for r in rows)
    assert manifest["dropped"] == {"broken": SHARDS // 4, "tiny": 0}
    data = storage.read_bytes(*shards_dir("ko"), *manifest["index"]["file"].split("/"))
    assert len(data) < INDEX_BYTES_AT_MOST and hashlib.sha256(data).hexdigest() == manifest["index"]["sha256"]
    start = time.perf_counter()
    back = indexed_shards(storage, shards_dir("ko"), manifest)
    took = time.perf_counter() - start
    print(f"index of {SHARDS} shards: {len(data) / 1e6:.2f} MB, read in {took:.2f} s")
    assert took < 15  # ~1 s on one core; the bound leaves room for a loaded CI machine
    assert back == sorted(rows, key=lambda r: r["path"])


def test_rows_come_back_in_path_order_with_the_same_digest_and_bytes_each_time(tmp_path):
    storage = Storage(str(tmp_path))
    rows = _rows(50)
    rows[0] = {k: v for k, v in rows[0].items() if k != "bytes"}  # a shard bucketed before its size was recorded
    entry = write_index(storage, ("ko", "shards"), "abc", rows)
    assert entry["file"] == f"abc/{FILE}" and entry["shards"] == 50
    back = read_index(storage, ("ko", "shards"), entry["file"])
    assert back == sorted([{**r, "bytes": r.get("bytes")} for r in rows], key=lambda r: r["path"])
    assert write_index(storage, ("ko", "shards"), "abc", list(reversed(rows))) == entry  # same rows, same bytes
    # the digest as the manifests always had it: sha256 over the shards' sha256s in path order
    assert digest(rows) == hashlib.sha256("".join(r["sha256"] for r in back).encode()).hexdigest()
    assert digest(rows[1:]) != digest(rows)


def test_the_bucket_digest_is_over_the_shard_bytes_and_the_key_follows_the_config(tmp_path):
    storage = _translated(tmp_path, parts=1)
    manifest = bucket(storage, "ko", test_data.SMALL)
    rows = indexed_shards(storage, shards_dir("ko"), manifest)
    files = [storage.read_bytes(*shards_dir("ko"), *r["path"].split("/")) for r in rows]
    assert [(r["sha256"], r["bytes"]) for r in rows] == [(hashlib.sha256(f).hexdigest(), len(f)) for f in files]
    assert manifest["digest"] == hashlib.sha256("".join(hashlib.sha256(f).hexdigest() for f in files).encode()).hexdigest()
    assert bucket(storage, "ko", test_data.SMALL) == manifest  # same inputs: same key, digest and index
    other = bucket(storage, "ko", test_data.SMALL.model_copy(update={"jpeg_quality": 80}))
    assert other["key"] != manifest["key"] and other["index"]["file"] == f"{other['key']}/{FILE}"


def test_a_manifest_of_an_older_pea_names_the_stage_to_run_again(tmp_path):
    storage = Storage(str(tmp_path))
    with pytest.raises(PeaError, match="older pea") as e:
        index_file(storage, shards_dir("ko"), {"digest": "d", "shards": []})
    assert "pea bucket" in e.value.fix


class Calls:
    """Counts the Storage calls a stage makes that may be a request each: exists, glob, listing, read_bytes."""

    def __init__(self, monkeypatch):
        self.made = []
        for name in ("exists", "glob", "listing", "read_bytes"):
            method = getattr(Storage, name)
            monkeypatch.setattr(Storage, name, self._counted(name, method))

    def _counted(self, name, method):
        return lambda storage, *parts: self.made.append((name, "/".join(parts))) or method(storage, *parts)

    def __call__(self, name: str, *words: str) -> list[str]:
        return [parts for made, parts in self.made if made == name and all(w in parts for w in words)]


def _translated(tmp_path, parts: int, root: Storage | None = None) -> Storage:
    storage = root or Storage(str(tmp_path / "root"))
    for i in range(parts):
        folder = make_folder(tmp_path / f"i{i}", n=5)
        harvest(storage, "ko", SourceSpec(name=f"part{i}", kind="folder", uri=str(folder)))
    translate(storage, "ko", "kor_Hang", "none", lambda: None)
    return storage


def _crash_after_first(name):
    raise RuntimeError("injected")


def test_a_resumed_bucket_run_lists_its_done_markers_once(tmp_path, monkeypatch):
    storage = _translated(tmp_path, parts=4)
    with pytest.raises(RuntimeError, match="injected"):
        bucket(storage, "ko", test_data.SMALL, after_input=_crash_after_first)
    calls = Calls(monkeypatch)
    manifest = bucket(storage, "ko", test_data.SMALL)
    assert calls("listing") == [f"ko/shards/{manifest['key']}/_done"]
    assert not calls("exists", "_done") and not calls("glob")  # no request per input
    assert len(calls("read_bytes", "_done")) == 1  # only the marker of the input the first run finished
    assert manifest["samples"] == 20 and manifest["index"]["shards"] == len(indexed_shards(storage, shards_dir("ko"), manifest))


def test_a_resumed_cache_run_lists_its_outputs_once_and_redoes_only_the_missing(tmp_path, tiny_sdxl, monkeypatch):
    storage = _translated(tmp_path, parts=2)
    bucket(storage, "ko", test_data.SMALL)
    encoders = Encoders(tiny_sdxl.vae, batch_size=5)
    first = cache_features(storage, "ko", "tiny-sdxl", lambda: encoders)
    rows = indexed_shards(storage, features_dir("ko", "tiny-sdxl"), first)
    storage.remove(*features_dir("ko", "tiny-sdxl"), *rows[1]["path"].split("/"))  # lost, as a killed run leaves it
    calls, redone = Calls(monkeypatch), []
    again = cache_features(storage, "ko", "tiny-sdxl", lambda: encoders,
                           mapper=lambda make, items: redone.extend(items) or in_process(make, items))
    assert again == first and indexed_shards(storage, features_dir("ko", "tiny-sdxl"), again) == rows
    assert redone == [{"path": rows[1]["path"].split("/", 1)[1]}]
    assert calls("listing") == [f"ko/features/tiny-sdxl/{first['key']}"]
    assert not calls("exists", first["key"]) and not calls("glob")


@pytest.mark.integration
def test_on_s3_a_resumed_bucket_run_makes_no_request_per_input(tmp_path, s3_root):
    import fsspec

    storage = Storage(*s3_root)
    try:
        _translated(tmp_path, parts=3, root=storage)
        with pytest.raises(RuntimeError, match="injected"):
            bucket(storage, "ko", test_data.SMALL, after_input=_crash_after_first)
        made = []
        storage.fs.s3.meta.events.register(
            "before-parameter-build.s3",
            lambda model, params, **_: made.append((model.name, params.get("Key") or params.get("Prefix"))))
        manifest = bucket(storage, "ko", test_data.SMALL)
        done = [op for op, where in made if (where or "").startswith(f"root/ko/shards/{manifest['key']}/_done/")]
        # one listing; the marker the first run wrote read once (s3fs: HEAD then GET); the two inputs done now write theirs
        assert sorted(done) == ["GetObject", "HeadObject", "ListObjectsV2", "PutObject", "PutObject"]
        assert manifest["samples"] == 15 and indexed_shards(storage, shards_dir("ko"), manifest)
    finally:
        fsspec.config.conf.pop("s3", None)
