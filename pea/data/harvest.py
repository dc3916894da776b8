"""Harvest: image-text pairs into <root>/<lang>/raw/<source>/ as webdataset shards.

Metadata sources (LAION2B-multi joined, WuKong, LAION-en) download with img2dataset: webdataset output, our
columns kept in each sample's .json, retries, incremental mode (finished shards are not fetched again),
multiprocessing locally and its ray or pyspark distributor at scale. Local folders and existing shards are
packed or imported into the same layout. The manifest counts what landed and what failed, by reason.
"""

import io
import json
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from pea.data.sources import SourceSpec, read_metadata
from pea.data.tars import IMAGE_EXTS, iter_samples, write_shard
from pea.errors import PeaError
from pea.layout import raw_dir
from pea.storage import Storage

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
    samples_per_shard: int = 10000
    distributor: Literal["multiprocessing", "ray", "pyspark"] = "multiprocessing"


def harvest(storage: Storage, lang: str, source: SourceSpec, cfg: HarvestConfig = HarvestConfig()) -> dict:
    out = raw_dir(lang, source.name)
    if source.downloads:
        _download(storage, lang, source, cfg)
    elif source.kind == "folder":
        _pack_folder(storage, source, out)
    else:
        _import_shards(storage, source, out)
    manifest = _summarize(storage, out, source)
    storage.write_json(manifest, *out, "manifest.json")
    return manifest


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


def _pack_folder(storage: Storage, source: SourceSpec, out: tuple[str, ...]) -> None:
    """Images with a sidecar <stem>.txt (native caption) and optional <stem>.en.txt (English)."""
    folder = Path(source.uri)
    if not folder.is_dir():
        raise PeaError(f"source folder {folder} does not exist", "give --source-uri an existing folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower().lstrip(".") in IMAGE_EXTS)
    samples = []
    for i, path in enumerate(images):
        native = path.with_suffix(".txt")
        english = path.with_suffix(".en.txt")
        meta = {
            "native": native.read_text(encoding="utf-8").strip() if native.exists() else "",
            "english": english.read_text(encoding="utf-8").strip() if english.exists() else "",
            "culture": source.culture,
            "status": "success",
        }
        ext = path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
        samples.append({"__key__": f"{i:09d}", ext: path.read_bytes(), "json": json.dumps(meta).encode()})
    for n, start in enumerate(range(0, len(samples), 10000)):
        storage.write_bytes(write_shard(samples[start : start + 10000]), *out, f"{n:05d}.tar")


def _import_shards(storage: Storage, source: SourceSpec, out: tuple[str, ...]) -> None:
    src = Storage(source.uri.rsplit("/", 1)[0]) if "*" in source.uri else None
    paths = src.fs.glob(source.uri.removeprefix("s3://")) if src else [source.uri]
    if not paths:
        raise PeaError(f"no shards match {source.uri}", "give --source-uri a tar path or glob")
    for n, path in enumerate(sorted(paths)):
        data = (src or Storage(path)).fs.cat_file(path)
        for _ in iter_samples(io.BytesIO(data), path):  # refuse unsafe members before anything is copied
            pass
        storage.write_bytes(data, *out, f"{n:05d}.tar")


def _summarize(storage: Storage, out: tuple[str, ...], source: SourceSpec) -> dict:
    shards = [p for p in storage.glob(*out, "*.tar")]
    counts: dict[str, int] = {}
    for stats_path in storage.glob(*out, "*_stats.json"):
        stats = json.loads(storage.read_bytes(stats_path))
        counts["requested"] = counts.get("requested", 0) + stats.get("count", 0)
        for status, n in stats.get("status_dict", {}).items():
            reason = "success" if status == "success" else status
            counts[reason] = counts.get(reason, 0) + n
    if not counts:  # packed or imported: every sample in the shards landed
        n = sum(sum(1 for _ in iter_samples(io.BytesIO(storage.read_bytes(p)), p)) for p in shards)
        counts = {"requested": n, "success": n}
    return {
        "source": source.model_dump(),
        "shards": [p.rsplit("/", 1)[-1] for p in shards],
        "counts": counts,
    }
