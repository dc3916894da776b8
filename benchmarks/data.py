"""Data-stage throughput against its floors.

    uv run python benchmarks/data.py

bucket_images_per_s_per_core: the bucket stage (decode, bucket, resize, crop, JPEG encode, shard write) on
  one process, against pil_floor_images_per_s_per_core: plain PIL decode + resize of the same images.
loader_batches_per_s: the training loader over cached feature shards (tiny-sdxl, batch 16), against
  kd_step_batches_per_s: how fast a cached KD step consumes batches on the same machine.
The last line is one JSON object.
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pea.adapter import AdapterConfig, PEAAdapter
from pea.data.buckets import BucketConfig, cover_and_crop, make_buckets, nearest_bucket
from pea.data.cache import cache_features, load_null
from pea.layout import features_dir
from pea.data.harvest import harvest
from pea.data.loader import BucketBatchLoader
from pea.data.records import features_batch
from pea.data.shards import bucket
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.distill import HookedUNet, KDConfig, kd_step, training_scheduler
from pea.features import FeatureExtractor
from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.presets import get_preset
from pea.storage import Storage


def _photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """Smooth gradients plus noise: JPEG sizes closer to photos than flat colour."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.2, 1)) % 256, (y * rng.uniform(0.2, 1)) % 256,
                     ((x + y) * rng.uniform(0.1, 0.5)) % 256], -1)
    array = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _folder(path: Path, n: int, sizes: list[tuple[int, int]], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        (path / f"{i:05d}.jpg").write_bytes(_photo_like(rng, w, h))
        (path / f"{i:05d}.txt").write_text(f"사진 {i}", encoding="utf-8")
        (path / f"{i:05d}.en.txt").write_text(f"photo {i}", encoding="utf-8")
    return path


def _prepared(root: Path, folder: Path) -> Storage:
    storage = Storage(str(root))
    harvest(storage, "ko", SourceSpec(name="bench", kind="folder", uri=str(folder)))
    translate(storage, "ko", "kor_Hang", "none", lambda: None)
    return storage


def bucket_rates(tmp: Path, n: int) -> tuple[float, float]:
    folder = _folder(tmp / "big", n, [(640, 480), (480, 640), (800, 450), (512, 512)], seed=0)
    cfg = BucketConfig(side=512, step=64, samples_per_shard=200)
    storage = _prepared(tmp / "root-big", folder)
    start = time.perf_counter()
    bucket(storage, "ko", cfg)
    bucket_rate = n / (time.perf_counter() - start)

    buckets = make_buckets(cfg)
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    start = time.perf_counter()
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")
        cover_and_crop(image, nearest_bucket(*image.size, buckets))
    floor_rate = n / (time.perf_counter() - start)
    return bucket_rate, floor_rate


def loader_and_kd_rates(tmp: Path, n: int, batch: int, model_cache: Path) -> tuple[float, float]:
    preset = get_preset("tiny-sdxl")
    folder = _folder(tmp / "small", n, [(48, 40), (40, 64), (32, 32)], seed=1)
    storage = _prepared(tmp / "root-small", folder)
    bucket(storage, "ko", BucketConfig(side=32, step=8, samples_per_shard=64))
    pipe = load_pipeline(preset, model_cache)
    student = load_text_encoder(preset.student_for(get_language("ko")), model_cache)
    features = cache_features(storage, "ko", preset.name, FeatureExtractor(pipe, student), batch_size=64,
                              dtype=torch.float16)
    loader = BucketBatchLoader(storage, features_dir("ko", preset.name), features["shards"], batch,
                               features_batch, shuffle_buffer=256)
    start = time.perf_counter()
    batches = [b for _, b in loader()]
    loader_rate = len(batches) / (time.perf_counter() - start)

    adapter = PEAAdapter(AdapterConfig(input_dim=student.hidden_size, context_dim=preset.context_dim,
                                       pooled_dim=preset.pooled_dim, hidden_dims=preset.adapter_hidden))
    noise = training_scheduler(pipe.scheduler.config)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    unet, null, cfg = HookedUNet(pipe.unet), load_null(storage, "ko", preset.name), KDConfig()
    pipe.unet.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)

    def step(b):
        kd_step(unet, adapter, noise, b, null, cfg, gen).loss.backward()
        opt.step()
        opt.zero_grad()

    for b in batches[:3]:
        step(b)
    start = time.perf_counter()
    for b in batches:
        step(b)
    kd_rate = len(batches) / (time.perf_counter() - start)
    return loader_rate, kd_rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images for the bucket benchmark")
    parser.add_argument("--loader-images", type=int, default=600, help="images for the loader benchmark")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model-cache", default="pea-data/models")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # PIL decodes and resizes on one thread: the bucket stage in one process is its per-core rate
        bucket_rate, floor_rate = bucket_rates(Path(tmp), args.images)
        loader_rate, kd_rate = loader_and_kd_rates(Path(tmp), args.loader_images, args.batch, Path(args.model_cache))
    print(json.dumps({
        "images": args.images,
        "bucket_images_per_s_per_core": round(bucket_rate, 1),
        "pil_floor_images_per_s_per_core": round(floor_rate, 1),
        "bucket_vs_floor": round(bucket_rate / floor_rate, 3),
        "loader_batches_per_s": round(loader_rate, 1),
        "kd_step_batches_per_s": round(kd_rate, 1),
        "loader_headroom": round(loader_rate / kd_rate, 2),
        "batch": args.batch,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
