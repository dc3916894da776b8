"""Bucket: raw shards + caption tables -> per-bucket webdataset shards under <lang>/shards/<key>/<W>x<H>/, the key
of the caption tables and the bucket config (pea.layout.key).

Each raw shard is one unit of work: its output shards have names derived from it and a done marker is
written last, so a re-run skips finished inputs and redoes an unfinished one under the same names (no
duplicates). Broken, too large, tiny and uncaptioned samples are dropped and counted, never raised; so is the
sample a cut-off raw shard lost (`truncated`, see pea.data.tars), the samples before it kept.
"""

import functools
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.parquet as pq
from PIL import Image

from pea.data.buckets import BucketConfig, cover_and_crop, make_buckets, nearest_bucket
from pea.data.index import digest, write_index
from pea.data.parallel import Mapper, in_process
from pea.data.tars import IMAGE_EXTS, iter_samples, write_shard
from pea.errors import PeaError
from pea.layout import captions_dir, key, raw_dir, shards_dir
from pea.progress import Progress, quiet
from pea.storage import Storage

# Images with more pixels are dropped as too large before they are decoded. PIL only refuses ~179 MP (twice
# its MAX_IMAGE_PIXELS), so a 13300^2 RGBA PNG of 714 KB would be decoded into 0.7 GB and converted into
# another 0.5 GB. 64 MP (8192^2) admits every camera photo (the largest common sensors are ~61 MP) and far more
# than harvest keeps from the web by default (4096^2), while a decoded RGBA image stays within 256 MiB.
MAX_PIXELS = 8192**2


def bucket(
    storage: Storage,
    lang: str,
    cfg: BucketConfig,
    progress: Progress = quiet,
    after_input: Callable[[str], None] = lambda name: None,
    mapper: Mapper = in_process,
) -> dict:
    """Bucket every raw shard not done yet (one unit of work each, run by `mapper`: here or on Ray Data's
    workers), then write the index of all their shards and the manifest (pea.data.index)."""
    if not storage.exists(*captions_dir(lang, "manifest.json")):
        raise PeaError(f"no caption tables for {lang!r} under {storage.root}", f"run `pea translate --lang {lang}` first")
    tables = storage.read_json(*captions_dir(lang, "manifest.json"))["tables"]
    made = key(tables, cfg.model_dump())  # other captions or another config: other shards, beside these
    done = storage.listing(*shards_dir(lang, made), "_done")  # one listing, not a request per input
    items = [_item(table_path) for table_path in tables]
    todo = [item for item in items if _marker(item) not in done]  # the progress fraction counts these
    results = []
    for finished, result in enumerate(mapper(BucketUnit(storage, lang, cfg, made), todo), 1):
        progress(f"bucketed {result['name']}: {result['kept']} kept, {sum(result['dropped'].values())} dropped",
                 finished / len(todo))
        after_input(result["name"])
        results.append(result)
    # this run's results as they came back; only the inputs earlier runs finished are read from their markers
    results += [storage.read_json(*shards_dir(lang, made), "_done", _marker(item)) for item in items
                if _marker(item) in done]
    manifest = _manifest(storage, lang, cfg, made, results)
    storage.write_json(manifest, *shards_dir(lang), "manifest.json")
    return manifest


def _item(table_path: str) -> dict:
    """The unit of work of one caption table: its raw shard is <source>/<stem>.tar."""
    source, stem = table_path.split("/")[-3], table_path.rsplit("/", 1)[-1].removesuffix(".parquet")
    return {"table": table_path, "source": source, "stem": stem}


def _marker(item: dict) -> str:
    """The done marker's name under <key>/_done/, written last by the unit of work of `item`."""
    return f"{item['source']}-{item['stem']}.json"


@dataclass(frozen=True)
class BucketUnit:
    """Makes the unit of work that buckets one raw shard (see pea.data.parallel)."""

    storage: Storage
    lang: str
    cfg: BucketConfig
    made: str  # the outputs' folder under shards/ (pea.layout.key)

    def __call__(self) -> Callable[[dict], dict]:
        return functools.partial(_bucket_input, self.storage, self.lang, self.cfg, self.made, make_buckets(self.cfg))


def _bucket_input(storage: Storage, lang: str, cfg: BucketConfig, made: str, buckets, item: dict) -> dict:
    """One raw shard and its caption table -> its bucketed shards, then its done marker (written last)."""
    source, stem = item["source"], item["stem"]
    captions = {r["key"]: r for r in pq.read_table(io.BytesIO(storage.read_bytes(item["table"]))).to_pylist()}
    done = _bucket_one(storage, lang, cfg, buckets, made, source, stem, captions)
    storage.write_json(done, *shards_dir(lang, made), "_done", _marker(item))
    return {**done, "name": f"{source}/{stem}"}


def _bucket_one(storage, lang, cfg, buckets, made, source, stem, captions) -> dict:
    pending: dict[tuple[int, int], list[dict]] = {}
    written, dropped, kept = [], {"broken": 0, "too_large": 0, "tiny": 0, "no_caption": 0}, 0

    def flush(b):
        samples = pending.pop(b, [])
        if samples:
            data = write_shard(samples)
            path = f"{made}/{b[0]}x{b[1]}/{source}-{stem}-{len([w for w in written if w['bucket'] == list(b)]):04d}.tar"
            storage.write_bytes(data, *shards_dir(lang), *path.split("/"))
            written.append({"path": path, "bucket": list(b), "samples": len(samples),
                            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})

    raw = raw_dir(lang, source, f"{stem}.tar")
    with storage.open(*raw) as f:
        for sample in iter_samples(f, storage.uri(*raw), dropped):
            row = captions.get(sample["__key__"])
            if row is None or not row["native"]:
                dropped["no_caption"] += 1
                continue
            image, problem = _decode(sample)
            if problem:
                dropped[problem] += 1
                continue
            if min(image.size) < cfg.tiny_below:
                dropped["tiny"] += 1
                continue
            b = nearest_bucket(*image.size, buckets)
            cropped, (top, left) = cover_and_crop(image, b)
            buf = io.BytesIO()
            cropped.save(buf, format="JPEG", quality=cfg.jpeg_quality)
            meta = {"native": row["native"], "english": row["english"], "kind": row["kind"], "source": source,
                    "original_size": [image.height, image.width], "crop_top_left": [top, left],
                    "bucket": [b[0], b[1]]}
            pending.setdefault(b, []).append(
                {"__key__": f"{source}-{sample['__key__']}", "jpg": buf.getvalue(), "json": json.dumps(meta).encode()})
            kept += 1
            if len(pending[b]) >= cfg.samples_per_shard:
                flush(b)
    for b in list(pending):
        flush(b)
    return {"kept": kept, "dropped": dropped, "shards": written}


def _decode(sample: dict) -> tuple[Image.Image | None, str | None]:
    """(RGB image, None), or (None, why it is dropped): 'too_large' is known from the header alone (Image.open
    reads no pixels), so such an image is never decoded."""
    data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if data is None:
        return None, "broken"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                return None, "too_large"
            im.load()
            return im.convert("RGB"), None
    except Image.DecompressionBombError:  # over PIL's own limit, raised by Image.open
        return None, "too_large"
    except (OSError, ValueError):
        return None, "broken"


def _manifest(storage: Storage, lang: str, cfg: BucketConfig, made: str, results: list[dict]) -> dict:
    """The summary of every input's result (its done marker's content), after writing the index of their shards;
    none when they kept no sample: the stage is not done then, and the next one would train on nothing."""
    shards, dropped, per_bucket = [], {}, {}
    for done in results:
        shards += done["shards"]
        for reason, n in done["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    for s in shards:
        size = f"{s['bucket'][0]}x{s['bucket'][1]}"
        per_bucket[size] = per_bucket.get(size, 0) + s["samples"]
    if not per_bucket:
        raise PeaError(f"bucketing kept no sample of {lang!r} (dropped: {dropped})",
                       "check the harvested images and captions (`pea harvest` prints what it skipped)")
    return {"key": made, "config": cfg.model_dump(), "buckets": per_bucket, "samples": sum(per_bucket.values()),
            "dropped": dropped, "digest": digest(shards), "index": write_index(storage, shards_dir(lang), made, shards)}
