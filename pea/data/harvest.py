"""Harvest: image-text pairs into <root>/<lang>/raw/<source>/ as webdataset shards.

Metadata sources (LAION2B-multi joined, WuKong, LAION-en) download with img2dataset: webdataset output, our
columns kept in each sample's .json, retries, incremental mode (finished shards are not fetched again),
multiprocessing locally and its ray or pyspark distributor at scale. Local folders and existing shards are
packed or imported into the same layout, streamed: one sample is in memory at a time, whatever the input's size,
and each shard appears whole once it is finished. The manifest counts what landed and what failed, by reason.

Bad external data is handled at the smallest unit that holds it:
- sample-level, skipped and counted in the manifest's `counts`, the rest kept: `bad_json` (a sample's .json
  that is not a UTF-8 JSON object with string captions), `bad_caption_encoding` (a folder's caption file not
  in UTF-8), `too_large` (a folder image over MAX_MEMBER_BYTES, never read), `truncated` (the sample being
  read when a shard ended early, see pea.data.tars).
- file-level, one PeaError naming the file and the fix, and no shard of this run left behind: a shard that is
  not a readable tar, an unsafe or oversized tar member (pea.data.tars), a metadata parquet that is not a
  parquet or lacks a column (pea.data.sources).
"""

import contextlib
import errno
import io
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from pea.data.sources import SourceSpec, read_metadata
from pea.data.tars import IMAGE_EXTS, MAX_MEMBER_BYTES, BadSample, count, iter_samples, write_samples
from pea.errors import PeaError
from pea.layout import raw_dir
from pea.storage import Storage, write_error

KEPT_COLUMNS = ["native", "english", "culture"]  # img2dataset records width and height itself


class HarvestConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    processes: int = 1
    threads: int = 16
    retries: int = 2
    timeout_s: int = 10
    min_image_size: int = 64  # smaller images are not kept
    max_image_area: float = 4096.0**2  # larger ones (decompression bombs, giant scans) are not kept
    max_aspect_ratio: float = 4.0
    samples_per_shard: int = 10000  # img2dataset's shards and packed folders' shards
    distributor: Literal["multiprocessing", "ray", "pyspark"] = "multiprocessing"


def harvest(storage: Storage, lang: str, source: SourceSpec, cfg: HarvestConfig = HarvestConfig()) -> dict:
    out = raw_dir(lang, source.name)
    if source.downloads:
        _download(storage, lang, source, cfg)
        shards, counts = [p.rsplit("/", 1)[-1] for p in storage.glob(*out, "*.tar")], _download_counts(storage, out)
    else:
        shards, counts = _copy_in(storage, source, out, cfg)
    manifest = {"source": source.model_dump(), "shards": shards, "counts": counts}
    storage.write_json(manifest, *out, "manifest.json")
    return manifest


def sample_meta(sample: dict) -> dict:
    """A raw sample's .json ({} without one), or BadSample('bad_json') unless it is a UTF-8 JSON object whose
    captions are strings: what translate reads from each sample."""
    try:
        meta = json.loads(sample.get("json", b"{}").decode("utf-8"))  # json.loads(bytes) would guess UTF-16/32 too
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        raise BadSample("bad_json") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k) or "", str) for k in ("native", "english")):
        raise BadSample("bad_json")
    return meta


def _download(storage: Storage, lang: str, source: SourceSpec, cfg: HarvestConfig) -> None:
    from img2dataset import download

    out = raw_dir(lang, source.name)
    table = read_metadata(source, lang, fs_open=lambda uri, mode: Storage(uri).fs.open(uri, mode))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(buf.getvalue(), *out, "urls.parquet")
    storage.makedirs(*out)
    download(
        url_list=storage.uri(*out, "urls.parquet"),
        input_format="parquet",
        url_col="url",
        save_additional_columns=KEPT_COLUMNS,
        output_format="webdataset",
        output_folder=storage.uri(*out),
        resize_mode="no",  # the bucket stage resizes, to the bucket's own size
        skip_reencode=True,
        processes_count=cfg.processes,
        thread_count=cfg.threads,
        retries=cfg.retries,
        timeout=cfg.timeout_s,
        min_image_size=cfg.min_image_size,
        max_image_area=cfg.max_image_area,
        max_aspect_ratio=cfg.max_aspect_ratio,
        number_sample_per_shard=cfg.samples_per_shard,
        incremental_mode="incremental",
        distributor=cfg.distributor,
        enable_wandb=False,
        compute_hash=None,
    )


def _download_counts(storage: Storage, out: tuple[str, ...]) -> dict:
    """What img2dataset requested and how each request ended, summed over its shards' stats."""
    counts = {"requested": 0, "success": 0}
    for stats_path in storage.glob(*out, "*_stats.json"):
        stats = json.loads(storage.read_bytes(stats_path))
        counts["requested"] += stats.get("count", 0)
        for status, n in stats.get("status_dict", {}).items():
            counts[status] = counts.get(status, 0) + n
    return counts


def _copy_in(storage: Storage, source: SourceSpec, out: tuple[str, ...], cfg: HarvestConfig) -> tuple[list[str], dict]:
    """Pack a folder or import shards into `out`: (shard names, counts). A file-level error removes the shards
    this run wrote, so that no half source is left."""
    dropped: dict[str, int] = {}
    inputs = _folder_inputs(source, cfg, dropped) if source.kind == "folder" else _shard_inputs(source, dropped)
    storage.remove(*out, "manifest.json")  # an earlier harvest's: the shards it lists are about to be replaced
    written, success = [], 0
    try:
        for name, samples in inputs:
            if n := _write_shard(storage, (*out, name), samples):
                written.append(name)
                success += n
    except BaseException:
        for name in written:
            storage.remove(*out, name)
        raise
    return written, {"requested": success + sum(dropped.values()), "success": success, **dropped}


def _write_shard(storage: Storage, parts: tuple[str, ...], samples: Iterator[dict]) -> int:
    """Write `samples` as the shard at `parts`, one sample at a time; no file when there are none."""
    first = next(samples, None)
    if first is None:
        return 0
    with _staged_file(storage, *parts) as f:
        return write_samples(itertools.chain([first], samples), f)


@contextlib.contextmanager
def _staged_file(storage: Storage, *parts: str):
    """A temporary local file to write into, put at `parts` only once the block ends without an error: the shard
    appears whole (Storage.put_file moves or uploads it, and names the target if that fails), a failed one nowhere."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="pea-shard-", suffix=".tar")
        with os.fdopen(fd, "wb") as f:
            yield f
        storage.put_file(tmp, *parts)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk under the staging file; others are the input's
            raise
        where = tmp or tempfile.gettempdir()
        raise write_error(where, e, f"set TMPDIR to a folder with room for {'/'.join(parts)}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def _folder_inputs(source: SourceSpec, cfg: HarvestConfig, dropped: dict) -> list[tuple[str, Iterator[dict]]]:
    """(shard name, its samples, read only when written) for a folder of images with a sidecar <stem>.txt
    (native caption) and an optional <stem>.en.txt (English), `cfg.samples_per_shard` images a shard."""
    folder = Path(source.uri)
    if not folder.is_dir():
        raise PeaError(f"source folder {folder} does not exist", "give --source-uri an existing folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTS and p.is_file())
    per = cfg.samples_per_shard
    return [(f"{n:05d}.tar", _folder_samples(images[start : start + per], start, source.culture, dropped))
            for n, start in enumerate(range(0, len(images), per))]


def _folder_samples(images: list[Path], first: int, culture: bool, dropped: dict) -> Iterator[dict]:
    for i, path in enumerate(images, first):
        try:
            sample = _folder_sample(path, f"{i:09d}", culture)
        except BadSample as e:
            count(dropped, e.reason)
            continue
        yield sample


def _folder_sample(path: Path, key: str, culture: bool) -> dict:
    if path.stat().st_size > MAX_MEMBER_BYTES:  # iter_samples would refuse the whole shard for it
        raise BadSample("too_large")
    meta = {"native": _caption(path.with_suffix(".txt")), "english": _caption(path.with_suffix(".en.txt")),
            "culture": culture, "status": "success"}
    ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
    return {"__key__": key, ext: path.read_bytes(), "json": json.dumps(meta).encode()}


def _caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() if path.exists() else ""
    except UnicodeDecodeError:
        raise BadSample("bad_caption_encoding") from None


def _shard_inputs(source: SourceSpec, dropped: dict) -> list[tuple[str, Iterator[dict]]]:
    """(shard name, its good samples, read only when written) for each shard matching `source.uri` (a path or a
    glob): one output shard per input with its keys kept, since keys need only be unique within a shard."""
    fs = Storage(source.uri.rsplit("/", 1)[0]).fs
    paths = sorted(fs.glob(source.uri.removeprefix("s3://")))
    if not paths:
        raise PeaError(f"no shards match {source.uri}", "give --source-uri a tar path or glob")
    scheme = "s3://" if source.uri.startswith("s3://") else ""
    return [(f"{n:05d}.tar", _shard_samples(fs, path, scheme + path, dropped)) for n, path in enumerate(paths)]


def _shard_samples(fs, path: str, uri: str, dropped: dict) -> Iterator[dict]:
    with fs.open(path, "rb") as f:
        for sample in iter_samples(f, uri, dropped):
            try:
                sample_meta(sample)
            except BadSample as e:
                count(dropped, e.reason)
                continue
            yield sample
