"""Bad external data (issue #16 items 4 and 5): a bad sample inside a shard or a folder is skipped and counted by
reason, the good ones kept; a file that cannot be read at all is one `error:` line naming it, with nothing of the
source left behind; and imports stream, so memory holds one sample, not the input."""

import gzip
import io
import json
import os
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_helpers import image_bytes
from pea.data.buckets import BucketConfig
from pea.data.harvest import harvest
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.tars import MAX_MEMBER_BYTES, iter_samples
from pea.data.translate import translate
from pea.errors import PeaError
from pea.storage import Storage

GOOD_JSON = json.dumps({"native": "빨간 원", "english": "a red circle"}).encode()
BAD_JSON = {
    "malformed": b'{"native": "x",',
    "not-utf8": '{"native": "빨간 원"}'.encode("euc-kr"),
    "not-an-object": b'["x"]',
    "caption-not-a-string": b'{"native": 5}',
}


def _tar_bytes(samples: list[dict]) -> bytes:
    """A webdataset tar of `samples` ({'__key__': ..., '<ext>': bytes}), members in sample order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _samples(n: int) -> list[dict]:
    return [{"__key__": f"{i:04d}", "jpg": image_bytes(40, 40, (200, 0, 0)), "json": GOOD_JSON} for i in range(n)]


def _keys(storage: Storage, *parts: str) -> list[str]:
    """Keys of a written shard, read strictly: a cut-off shard would raise."""
    with storage.open(*parts) as f:
        return [s["__key__"] for s in iter_samples(f, "out")]


def _import(tmp_path: Path, data: bytes) -> tuple[Storage, dict]:
    (tmp_path / "in.tar").write_bytes(data)
    storage = Storage(str(tmp_path / "root"))
    return storage, harvest(storage, "ko", SourceSpec(name="w", kind="webdataset", uri=str(tmp_path / "in.tar")))


def _leftovers(root: Path) -> list[Path]:
    """Files a failed harvest must not leave: shards, temporary files, a manifest (a stage's lock file stays)."""
    return [p for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts]


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PEA_DATA_DIR": str(tmp_path / "pea"), "PEA_STORAGE_ROOT": str(tmp_path / "pea" / "root"),
            "PEA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'pea' / 'mlflow.db'}"}


def _harvest_cli(pea_cli, tmp_path: Path, kind: str, uri: Path):
    return pea_cli("harvest", "--lang", "ko", "--source-kind", kind, "--source-uri", str(uri), "--source-name", "x",
                   env=_env(tmp_path), cwd=tmp_path)


def _one_line_error(result, *words: str) -> None:
    """Refused: exit code 2, the `error:` line (and its `fix:` line) only, naming `words`."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: ") and all(line.startswith("  fix: ") for line in lines[1:]), result.err
    assert len(lines) <= 2, result.err
    for word in words:
        assert word in lines[0], result.err


# sample-level: counted by reason, the good samples kept


@pytest.mark.parametrize("payload", BAD_JSON.values(), ids=BAD_JSON.keys())
def test_a_sample_with_a_bad_json_is_counted_and_the_rest_imported_and_translated(payload, tmp_path):
    samples = _samples(3)
    samples[1]["json"] = payload
    storage, manifest = _import(tmp_path, _tar_bytes(samples))
    assert manifest["counts"] == {"requested": 3, "success": 2, "bad_json": 1}
    assert _keys(storage, "ko", "raw", "w", "00000.tar") == ["0000", "0002"]
    captions = translate(storage, "ko", "kor_Hang", "none", lambda: pytest.fail("every caption has both sides"))
    assert captions["counts"] == {"parallel": 2, "culture": 0} and captions["dropped"] == {}


def test_a_folder_caption_not_in_utf8_is_counted_and_the_rest_packed(tmp_path, pea_cli):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.jpg").write_bytes(image_bytes(40, 40, (0, 200, 0)))
        (folder / f"{name}.txt").write_text("초록 원", encoding="utf-8")
    (folder / "b.txt").write_bytes("초록 원".encode("euc-kr"))
    (folder / "c.en.txt").write_bytes("a green café".encode("latin-1"))
    result = _harvest_cli(pea_cli, tmp_path, "folder", folder)
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "pea" / "root" / "ko" / "raw" / "x" / "manifest.json").read_text())
    assert manifest["counts"] == {"requested": 3, "success": 1, "bad_caption_encoding": 2}
    assert "'bad_caption_encoding': 2" in result.out
    assert _keys(Storage(str(tmp_path / "pea" / "root")), "ko", "raw", "x", "00000.tar") == ["000000000"]


def test_a_folder_image_too_large_to_hold_is_counted_and_never_read(tmp_path):
    """A sparse file: its size alone says it is over what a raw shard may hold (the bucket stage would refuse
    the whole shard for it)."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(image_bytes(40, 40, (0, 0, 200), "PNG"))
    with open(folder / "big.png", "wb") as f:
        f.truncate(MAX_MEMBER_BYTES + 1)
    storage = Storage(str(tmp_path / "root"))
    manifest = harvest(storage, "ko", SourceSpec(name="f", kind="folder", uri=str(folder)))
    assert manifest["counts"] == {"requested": 2, "success": 1, "too_large": 1}
    assert _keys(storage, "ko", "raw", "f", "00000.tar") == ["000000000"]


def _cut_in_member(tar: bytes) -> bytes:
    return tar[: 512 + 100]  # the first member's header, then part of its data


def _cut_before(name: str, tar: bytes) -> bytes:
    """Cut where member `name`'s header starts (with its name): it and the end-of-archive blocks are gone."""
    return tar[: tar.index(name.encode())]


def _cut_after_member(tar: bytes) -> bytes:
    return _cut_before("0002.json", tar)  # the last sample keeps its image only


def _gzip_cut(tar: bytes) -> bytes:
    data = gzip.compress(tar)
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize("cut, kept", [(_cut_in_member, 0), (_cut_after_member, 2), (_gzip_cut, None)],
                         ids=["in-a-member", "before-a-header", "gzip"])
def test_a_cut_off_shard_keeps_the_samples_before_the_cut(cut, kept, tmp_path):
    """The sample being read at the cut is counted; those before it are imported (a cut gzip stream keeps as
    many as decompress whole)."""
    storage, manifest = _import(tmp_path, cut(_tar_bytes(_samples(3))))
    counts = manifest["counts"]
    assert counts["truncated"] == 1 and counts["requested"] == counts["success"] + 1 < 4
    assert kept is None or counts["success"] == kept
    written = _keys(storage, "ko", "raw", "w", "00000.tar") if counts["success"] else []
    assert written == ["0000", "0001", "0002"][: counts["success"]]
    assert manifest["shards"] == (["00000.tar"] if written else [])


def test_a_cut_off_raw_shard_is_counted_by_translate_and_bucket(tmp_path):
    """A raw shard pea did not write itself (img2dataset's, killed half way) with a bad .json in it too."""
    samples = _samples(4)
    samples[0]["json"] = BAD_JSON["malformed"]
    storage = Storage(str(tmp_path / "root"))
    storage.write_bytes(_cut_before("0003.json", _tar_bytes(samples)), "ko", "raw", "dl", "00000.tar")
    storage.write_json({"shards": ["00000.tar"]}, "ko", "raw", "dl", "manifest.json")
    captions = translate(storage, "ko", "kor_Hang", "none", lambda: pytest.fail("every caption has both sides"))
    assert captions["dropped"] == {"bad_json": 1, "truncated": 1} and captions["counts"]["parallel"] == 2
    shards = bucket(storage, "ko", BucketConfig(side=32, step=8))
    assert shards["samples"] == 2 and shards["dropped"]["truncated"] == 1 and shards["dropped"]["no_caption"] == 1


@pytest.mark.parametrize("cut", [_cut_in_member, _cut_after_member], ids=["in-a-member", "before-a-header"])
def test_a_cut_off_shard_of_peas_own_is_one_error(cut):
    """Bucketed and feature shards are written whole: one that is cut off has to be written again."""
    with pytest.raises(PeaError, match="own.tar: the tar ends early"):
        list(iter_samples(io.BytesIO(cut(_tar_bytes(_samples(3)))), "own.tar"))


# file-level: one line naming the file, nothing of the source left


@pytest.mark.parametrize("content", [b"", b"not a tar\n" * 100, image_bytes(40, 40, (1, 2, 3), "PNG")],
                         ids=["empty", "text", "png"])
def test_a_shard_that_is_not_a_tar_is_one_line_and_nothing_is_left(content, tmp_path, pea_cli, monkeypatch):
    """A good shard sorts first and is written before the bad one is read; it is removed again, and no shard
    staged in the temporary folder is left there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.tar").write_bytes(_tar_bytes(_samples(2)))
    (tmp_path / "in" / "b.tar").write_bytes(content)
    result = _harvest_cli(pea_cli, tmp_path, "webdataset", tmp_path / "in" / "*.tar")
    _one_line_error(result, str(tmp_path / "in" / "b.tar"), "is not a readable tar")
    assert _leftovers(tmp_path / "pea" / "root") == [] and list((tmp_path / "scratch").iterdir()) == []


def _parquet_bytes(**columns) -> bytes:
    """A one-row LAION2B-multi metadata parquet, with `columns` replaced."""
    table = {"URL": ["http://127.0.0.1:9/x.jpg"], "TEXT": ["빨간 원"], "ENG TEXT": ["a red circle"],
             "LANGUAGE": ["ko"], "WIDTH": [64], "HEIGHT": [64]} | columns
    buf = io.BytesIO()
    pq.write_table(pa.table(table), buf)
    return buf.getvalue()


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_text("URL,TEXT\nhttp://x,y\n"), ["is not a readable parquet file"]),
    (lambda p: p.write_bytes(_parquet_bytes()[:-20]), ["is not a readable parquet file"]),
    (lambda p: p.write_bytes(_parquet_bytes(WIDTH=["wide"])), ["column 'WIDTH' holds string values"]),
    (lambda p: None, ["does not exist"]),
], ids=["csv", "cut-off", "text-width", "missing"])
def test_a_metadata_parquet_that_cannot_be_read_is_one_line(make, words, tmp_path, pea_cli):
    make(tmp_path / "meta.parquet")
    result = _harvest_cli(pea_cli, tmp_path, "laion-multi", tmp_path / "meta.parquet")
    _one_line_error(result, str(tmp_path / "meta.parquet"), *words)
    assert _leftovers(tmp_path / "pea" / "root") == []


# streaming: memory holds one sample, not the input


@pytest.mark.parametrize("kind", ["webdataset", "folder"])
def test_an_import_holds_one_sample_in_memory_not_the_input(kind, tmp_path):
    """20 samples of 1 MiB (incompressible, never decoded at harvest): the old import read the whole input."""
    samples = [{"__key__": f"{i:04d}", "jpg": os.urandom(2**20), "json": GOOD_JSON} for i in range(20)]
    if kind == "webdataset":
        uri = tmp_path / "in.tar"
        uri.write_bytes(_tar_bytes(samples))
    else:
        uri = tmp_path / "images"
        uri.mkdir()
        for s in samples:
            (uri / f"{s['__key__']}.jpg").write_bytes(s["jpg"])
            (uri / f"{s['__key__']}.txt").write_text("빨간 원", encoding="utf-8")
    del samples
    storage = Storage(str(tmp_path / "root"))
    tracemalloc.start()
    try:
        manifest = harvest(storage, "ko", SourceSpec(name="s", kind=kind, uri=str(uri)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert manifest["counts"] == {"requested": 20, "success": 20}
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB for a 20 MiB input"  # a few copies of one or two samples
