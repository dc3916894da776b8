"""Harvest at scale (issue #15 item 3): metadata streamed into URL files, the rows left out counted apart from
the failures; an image whose header claims more than max_image_area refused before it is decoded; a shard that
failed fetched again on a re-run and counted once; the ray distributor on the cluster `connect` joins."""

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_helpers import image_bytes
from pea.data.harvest import CV_PIXELS, HarvestConfig, harvest
from pea.data.sources import SourceSpec
from pea.data.tars import iter_samples
from pea.errors import PeaError
from pea.storage import Storage
from servers import serve_files

ROOT = Path(__file__).resolve().parents[1]


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height: OpenCV refuses it from the header under a pixel limit, and
    without one allocates what it claims and then fails on the data ('Image decoding error')."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(data[ihdr : ihdr + 17]))
    return bytes(data)


def _laion_multi(path: Path, rows: list[tuple]) -> None:
    """A LAION2B-multi metadata parquet of (url, language, width) rows."""
    pq.write_table(pa.table({"URL": pa.array([r[0] for r in rows], pa.string()), "TEXT": ["빨간 원"] * len(rows),
                             "ENG TEXT": ["a red circle"] * len(rows),
                             "LANGUAGE": pa.array([r[1] for r in rows], pa.string()),
                             "WIDTH": [r[2] for r in rows], "HEIGHT": [200] * len(rows)}), path)


def _tar_keys(path: Path) -> list[str]:
    with open(path, "rb") as f:
        return [s["__key__"] for s in iter_samples(f, str(path))]


def test_a_rerun_fetches_the_shards_that_failed_again_and_counts_each_once(tmp_path):
    """Two rows a shard and a URL file: shard 0 (a0, a1), 1 (b0, the bomb), 2 (c0, c1). The first run finds c*
    down; then shard 0 is cut off as by a killed process. The re-run fetches shards 0 and 2 and never shard 1."""
    files = {f"/{name}.jpg": image_bytes(200 + 8 * i, 160, (30 * i, 0, 0)) for i, name in enumerate(["a0", "a1", "b0", "c0", "c1"])}
    files["/bomb.png"] = _png_claiming(20000, 20000)
    asked, down = [], {"/c0.jpg", "/c1.jpg"}
    with serve_files(files, asked, down) as base:
        _laion_multi(tmp_path / "meta.parquet", [
            (f"{base}/a0.jpg", "ko", 200), (f"{base}/a1.jpg", "ko", 200), (None, "ko", 200),
            (f"{base}/a0.jpg", "ja", 200), (f"{base}/b0.jpg", "ko", 200), (f"{base}/bomb.png", "ko", 200),
            (f"{base}/c0.jpg", "ko", 200), ("", "ko", 200), (f"{base}/c1.jpg", None, 200),
            (f"{base}/small.jpg", "ko", 10), (f"{base}/c1.jpg", "ko", 200),
        ])
        storage = Storage(str(tmp_path / "root"))
        source = SourceSpec(name="laion", kind="laion-multi", uri=str(tmp_path / "meta.parquet"), min_side=32)
        cfg = HarvestConfig(threads=2, retries=0, timeout_s=5, samples_per_shard=2, url_file_shards=1)
        first = harvest(storage, "ko", source, cfg)
        raw = tmp_path / "root" / "ko" / "raw" / "laion"
        (raw / "00000_stats.json").unlink()  # shard 0 never finished: no stats, half a tar
        (raw / "00000.tar").write_bytes((raw / "00000.tar").read_bytes()[:700])
        down.clear()
        asked.clear()
        second = harvest(storage, "ko", source, cfg)
    skipped = {"skipped_language": 2, "skipped_no_url": 2, "skipped_small": 1, "unfinished": 0}
    assert first["counts"] == {"requested": 6, "success": 3, "image area too large": 1,
                               "HTTP Error 503: Service Unavailable": 2} | skipped
    assert second["counts"] == {"requested": 6, "success": 5, "image area too large": 1} | skipped
    assert sorted(asked) == ["/a0.jpg", "/a1.jpg", "/c0.jpg", "/c1.jpg"]
    assert second["shards"] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [len(_tar_keys(raw / s)) for s in second["shards"]] == [2, 1, 2]
    assert sorted(p.name for p in (raw / "urls").iterdir()) == ["00000.parquet", "00001.parquet", "00002.parquet"]


MEASURE = """
import json, sys
import pyarrow as pa
from pea.data.harvest import _write_url_files
from pea.data.sources import SourceSpec, read_metadata
from pea.storage import Storage
skipped = {}
source = SourceSpec(name="m", kind="laion-multi", uri=sys.argv[1])
rows = _write_url_files(Storage(sys.argv[2]), ("urls",), read_metadata(source, "ko", skipped, batch_rows=4096), 100_000)
print(json.dumps({"rows": rows, "peak": pa.default_memory_pool().max_memory(), "skipped": skipped}))
"""


def test_metadata_is_streamed_into_url_files_in_batches_never_whole(tmp_path):
    """600k rows in row groups of 10k, half of them Korean: Arrow's peak allocation (in a fresh process) while they
    are scanned and written as URL files of 100k rows stays a fraction of the table's size."""
    n = 600_000
    table = pa.table({"URL": [f"http://127.0.0.1:9/images/{i:09d}.jpg" for i in range(n)],
                      "TEXT": [f"빨간 원 {i}" for i in range(n)], "ENG TEXT": [f"a red circle {i}" for i in range(n)],
                      "LANGUAGE": ["ko", "ja"] * (n // 2), "WIDTH": [256] * n, "HEIGHT": [256] * n})
    pq.write_table(table, tmp_path / "meta.parquet", row_group_size=10_000)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "meta.parquet"), str(tmp_path / "root")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == n // 2
    assert result["skipped"] == {"skipped_language": n // 2, "skipped_no_url": 0, "skipped_small": 0}
    files = sorted((tmp_path / "root" / "urls").iterdir())
    assert [pq.read_metadata(f).num_rows for f in files] == [100_000] * 3
    assert pq.read_schema(files[0]).names == ["url", "native", "english", "culture"]
    assert result["peak"] * 4 < table.nbytes, f"peak {result['peak'] / 2**20:.1f} MiB for a {table.nbytes / 2**20:.0f} MiB table"


def test_the_ray_distributor_joins_the_cluster_and_gives_its_tasks_the_worker_env(tmp_path, monkeypatch):
    """img2dataset itself is replaced: a real Ray run (local, ~25 s) counted the claiming PNG 'image area too
    large' with the limit in the task's runtime_env and 'Image decoding error' without it. The S3 endpoint goes
    along (checked by hand on a moto server: without it the workers found no shard and nothing was fetched)."""
    import fsspec
    import img2dataset
    from img2dataset import distributor

    _laion_multi(tmp_path / "meta.parquet", [("http://127.0.0.1:9/a.jpg", "ko", 200)])
    events, seen, task = [], [], distributor.ray_download
    monkeypatch.delenv(CV_PIXELS, raising=False)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    env = {CV_PIXELS: "1000000", "FSSPEC_S3": '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}'}

    def download(**kwargs):
        options = distributor.ray_download.bind(None, None).get_options()  # what .remote() would submit with
        seen.append((list(events), kwargs["distributor"], {k: os.environ[k] for k in env}, options["runtime_env"]["env_vars"]))

    monkeypatch.setattr(img2dataset, "download", download)
    source = SourceSpec(name="laion", kind="laion-multi", uri=str(tmp_path / "meta.parquet"))
    storage = Storage(str(tmp_path / "root"))
    cfg = HarvestConfig(distributor="ray", max_image_area=1000.0**2)
    manifest = harvest(storage, "ko", source, cfg, connect=lambda: events.append("connect"))
    assert seen == [(["connect"], "ray", env, env)]
    assert not set(env) & set(os.environ) and distributor.ray_download is task  # all restored
    assert manifest["counts"]["requested"] == 0 and manifest["counts"]["unfinished"] == 1
    with pytest.raises(PeaError, match="no cluster"):
        harvest(storage, "ko", source, cfg)


def test_a_folder_import_never_decodes_an_image(tmp_path, monkeypatch):
    """Folders and shards are copied byte for byte: a bomb in one costs nothing at harvest (bucket refuses it
    from its header, tests/test_hostile_inputs.py)."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    (folder / "bomb.txt").write_text("빨간 원", encoding="utf-8")
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("harvest decoded an image"))
    manifest = harvest(Storage(str(tmp_path / "root")), "ko", SourceSpec(name="f", kind="folder", uri=str(folder)))
    assert manifest["counts"] == {"requested": 1, "success": 1}
    with tarfile.open(tmp_path / "root" / "ko" / "raw" / "f" / "00000.tar") as tar:
        assert tar.extractfile("000000000.png").read() == (folder / "bomb.png").read_bytes()
