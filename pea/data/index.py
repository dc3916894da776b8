"""The shard index: one Parquet file per stage output that lists its shards (path, bucket, samples, sha256,
bytes), so that a stage's manifest.json stays a summary of a few hundred bytes however many shards there are.

At 250 k shards the list is ~50 MB of JSON that every reader would parse whole and Prefect would keep as a task
result; as Parquet (zstd) it is a few MB, read in about a second, and only by what walks the shards: the cache
stage and each training worker (a TrainJob carries the index's name, never the list). The index lives in the
output's own `<key>` folder (pea.layout.key) beside its shards, written before the manifest that names it, so a
later run with another config writes its own index beside it, never over it.

Both stages write and read the index here, and compute their digest here, the same way as before the index
existed (sha256 over the shards' sha256s in path order): the same shards keep the same digest and keys.
"""

import hashlib
import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pea.errors import PeaError
from pea.storage import Storage

FILE = "shards.parquet"
SCHEMA = pa.schema([("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("samples", pa.int64()),
                    ("sha256", pa.string()), ("bytes", pa.int64())])


def digest(rows: Sequence[dict]) -> str:
    """What a stage's shards are, byte for byte: sha256 over their sha256s in path order."""
    return hashlib.sha256("".join(r["sha256"] for r in sorted(rows, key=lambda r: r["path"])).encode()).hexdigest()


def write_index(storage: Storage, folder: tuple[str, ...], made: str, rows: Sequence[dict]) -> dict:
    """Write `rows` (dicts as read_index returns them) in path order to folder/<made>/shards.parquet; returns the
    manifest's entry for it: its name under `folder`, sha256 (a manifest that changes whenever its index does is
    enough of a cache key for the tasks) and shard count."""
    rows = sorted(rows, key=lambda r: r["path"])
    columns = {"path": [r["path"] for r in rows], "width": [r["bucket"][0] for r in rows],
               "height": [r["bucket"][1] for r in rows], "samples": [r["samples"] for r in rows],
               "sha256": [r["sha256"] for r in rows], "bytes": [r.get("bytes") for r in rows]}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, schema=SCHEMA), buf, compression="zstd")
    data = buf.getvalue()
    storage.write_bytes(data, *folder, made, FILE)
    return {"file": f"{made}/{FILE}", "sha256": hashlib.sha256(data).hexdigest(), "shards": len(rows)}


def read_index(storage: Storage, folder: tuple[str, ...], file: str) -> list[dict]:
    """The rows of the index `file` under `folder`, in path order: {path, bucket: [W, H], samples, sha256, bytes},
    `path` relative to `folder` (bytes is None for shards bucketed before it was recorded)."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(*folder, *file.split("/"))), schema=SCHEMA).to_pydict()
    return [{"path": p, "bucket": [w, h], "samples": n, "sha256": s, "bytes": b}
            for p, w, h, n, s, b in zip(*(table[c] for c in SCHEMA.names))]


def index_file(storage: Storage, folder: tuple[str, ...], manifest: dict) -> str:
    """The index a stage's manifest names; a manifest written before the index (it listed its shards itself) is
    one line saying to run that stage again, which finds the shards it wrote and indexes them."""
    if "index" not in manifest:
        raise PeaError(f"{storage.uri(*folder, 'manifest.json')} was written by an older pea (it has no shard index)",
                       "run its stage again (`pea bucket`, `pea cache`): it keeps the shards it wrote and indexes them")
    return manifest["index"]["file"]


def indexed_shards(storage: Storage, folder: tuple[str, ...], manifest: dict) -> list[dict]:
    """The rows of the index that the manifest of `folder` names (see read_index)."""
    return read_index(storage, folder, index_file(storage, folder, manifest))
