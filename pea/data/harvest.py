"""Harvest: image-text pairs into <root>/<lang>/raw/<source>/ as webdataset shards.

Metadata sources (LAION2B-multi joined, WuKong, LAION-en) download with img2dataset: webdataset output, our
columns kept in each sample's .json, retries, incremental mode (finished shards are not fetched again; one that
failed or got nothing is fetched again on a re-run), multiprocessing locally and its ray (on the profile's
cluster) or pyspark distributor at scale. The metadata is streamed into URL files of `url_file_shards` shards
each, so neither pea nor img2dataset holds more of it than one file (sources.read_metadata); an image whose
header claims more than max_image_area pixels is refused before it is decoded (_worker_env). Local folders and
existing shards are packed or imported into the same layout, streamed: one sample is in memory at a time,
whatever the input's size, and each shard appears whole once it is finished; they never decode an image (bucket
does, checking the header first). The manifest counts what landed and what failed, by reason, and metadata rows
left out, by reason (`skipped_language`, `skipped_no_url`, `skipped_small`), apart from the failures.

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
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from pea.data.sources import NORMALIZED, SourceSpec, read_metadata
from pea.data.tars import IMAGE_EXTS, MAX_MEMBER_BYTES, BadSample, count, iter_samples, write_samples
from pea.errors import PeaError
from pea.layout import raw_dir
from pea.storage import Storage, write_error

KEPT_COLUMNS = ["native", "english", "culture"]  # img2dataset records width and height itself
CV_PIXELS = "OPENCV_IO_MAX_IMAGE_PIXELS"  # see _worker_env


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
    # shards per URL file: img2dataset's driver holds one URL file in memory (1 M rows, a few 100 MB, by default)
    url_file_shards: int = 100
    distributor: Literal["multiprocessing", "ray", "pyspark"] = "multiprocessing"


def harvest(storage: Storage, lang: str, source: SourceSpec, cfg: HarvestConfig = HarvestConfig(),
            connect: Callable[[], None] | None = None) -> dict:
    """Harvest `source` into <lang>/raw/<source.name>/ and write its manifest. `connect` joins the cluster that
    img2dataset's ray distributor runs on (the profile's); it is called only for a download with that distributor."""
    out = raw_dir(lang, source.name)
    if source.downloads:
        shards, counts = _download(storage, lang, source, cfg, connect)
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


def _download(storage: Storage, lang: str, source: SourceSpec, cfg: HarvestConfig,
              connect: Callable[[], None] | None) -> tuple[list[str], dict]:
    """Download the metadata's rows for `lang` with img2dataset: (finished shards, counts). Metadata rows left out
    are counted by reason (sources.SKIPPED), the requested ones by how their request ended, summed over the
    finished shards, and those of shards that did not finish as `unfinished` (a re-run fetches them)."""
    if cfg.distributor == "ray" and connect is None:  # said before the metadata is scanned
        raise PeaError("a harvest with the ray distributor was given no cluster", "pass harvest(connect=...)")
    out = raw_dir(lang, source.name)
    skipped: dict[str, int] = {}
    rows = _write_url_files(storage, (*out, "urls"), read_metadata(source, lang, skipped),
                            cfg.samples_per_shard * cfg.url_file_shards)
    if rows:
        _forget_empty_shards(storage, out)
        storage.remove(*out, "manifest.json")  # an earlier harvest's: img2dataset takes any *.json for a shard's stats
        if cfg.distributor == "ray":
            connect()
        with _worker_env(cfg):
            _img2dataset(storage, out, cfg)
    shards, counts = _finished_shards(storage, out)
    return shards, counts | {"unfinished": rows - counts["requested"]} | skipped


def _img2dataset(storage: Storage, out: tuple[str, ...], cfg: HarvestConfig) -> None:
    """img2dataset over the URL files in out/urls/: each file is read whole, one at a time, and cut into shards
    numbered on from the last file's; in incremental mode a shard with stats is not fetched again."""
    from img2dataset import download

    storage.makedirs(*out)
    download(
        url_list=storage.uri(*out, "urls"),
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


def _write_url_files(storage: Storage, folder: tuple[str, ...], batches: Iterator[pa.RecordBatch], rows: int) -> int:
    """Write `batches` into `folder` as parquet files of `rows` rows (the last one fewer), one batch in memory at a
    time; returns how many rows. The same metadata gives the same files, so img2dataset numbers its shards the
    same on a re-run. An error removes the folder: no half list is left."""
    storage.remove(*folder)  # an earlier run's, which may hold more files
    written = 0
    try:
        for number, group in itertools.groupby(_cut(batches, rows), key=lambda item: item[0]):
            with _staged_file(storage, *folder, f"{number:05d}.parquet") as f, pq.ParquetWriter(f, NORMALIZED) as writer:
                for _, batch in group:
                    writer.write_batch(batch)
                    written += batch.num_rows
    except BaseException:
        storage.remove(*folder)
        raise
    return written


def _cut(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(file number, batch) for `batches` cut where each run of `rows` rows ends."""
    done = 0
    for batch in batches:
        while batch.num_rows:
            take = rows - done % rows
            yield done // rows, batch.slice(0, take)
            done += min(take, batch.num_rows)
            batch = batch.slice(take)


def _forget_empty_shards(storage: Storage, out: tuple[str, ...]) -> None:
    """Remove the stats of finished shards that got nothing, every download failed (the network or the hosts were
    down), so that this run fetches them again. A shard that never finished (its process killed, or an error
    img2dataset's own retry did not get past) has no stats, and img2dataset fetches it again by itself."""
    for path in storage.glob(*out, "*_stats.json"):
        stats = json.loads(storage.read_bytes(path))
        if stats.get("count", 0) and stats.get("failed_to_download") == stats["count"]:
            storage.remove(path)


@contextlib.contextmanager
def _worker_env(cfg: HarvestConfig):
    """Set what img2dataset's workers need from this process for the processes it starts (multiprocessing's
    spawned workers inherit this environment; Ray's tasks get it in their runtime_env), restored after:

    - OPENCV_IO_MAX_IMAGE_PIXELS, so that an image over max_image_area is refused from its header. img2dataset
      decodes every image with OpenCV (cv2.imdecode, even with resize_mode 'no') and only then compares its area
      with max_image_area; OpenCV allocates what the header claims first, so a 900-Mpx PNG of 2.6 MB costs its
      worker ~6 GB. OpenCV checks a header against this variable, read once, when a process loads it; its
      refusal is counted as 'image area too large' (_finished_shards).
    - FSSPEC_S3, the S3 endpoint that Storage gave fsspec in this process, which fsspec reads when a worker
      imports it: the workers open the s3:// URIs of their shards themselves."""
    env = {CV_PIXELS: str(int(min(cfg.max_image_area, 2**62)))}
    if fsspec.config.conf.get("s3"):
        env["FSSPEC_S3"] = json.dumps(fsspec.config.conf["s3"])
    with _environ(env), (_ray_task_env(env) if cfg.distributor == "ray" else contextlib.nullcontext()):
        yield


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """`env` in os.environ inside the block, and what was there before after it."""
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _ray_task_env(env: dict[str, str]):
    """img2dataset's ray distributor submits its module's `ray_download` task: with `env` in its runtime_env inside
    the block (Ray starts workers of their own for it, and merges `env` with the job's env_vars)."""
    from img2dataset import distributor

    task = distributor.ray_download
    distributor.ray_download = task.options(runtime_env={"env_vars": env})
    try:
        yield
    finally:
        distributor.ray_download = task


def _finished_shards(storage: Storage, out: tuple[str, ...]) -> tuple[list[str], dict]:
    """The shards img2dataset finished (those with stats; a shard cut off mid-way is left out) and what was
    requested and how each request ended, summed over them: a shard fetched again on a re-run counts once."""
    shards, counts = [], {"requested": 0, "success": 0}
    for stats_path in storage.glob(*out, "*_stats.json"):
        stats = json.loads(storage.read_bytes(stats_path))
        shards.append(stats_path.rsplit("/", 1)[-1].removesuffix("_stats.json") + ".tar")
        counts["requested"] += stats.get("count", 0)
        for status, n in stats.get("status_dict", {}).items():
            status = "image area too large" if "CV_IO_MAX_IMAGE_PIXELS" in status else status  # _worker_env's
            counts[status] = counts.get(status, 0) + n
    return shards, counts


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
    """A temporary local file to write into, put at `parts` only once the block ends without an error: the file (a
    shard, a URL list) appears whole (Storage.put_file moves or uploads it, and names the target if that fails), a
    failed one nowhere."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="pea-", suffix=f"-{parts[-1]}")
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
