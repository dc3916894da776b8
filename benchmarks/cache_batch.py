"""Does the cache stage's batch fit the GPU? The cache stage sizes its batch with
pea.models.precision.cache_batch_size from the GPU's memory; this runs that batch for real.

    python benchmarks/cache_batch.py --preset sdxl --gpu-gb 40     # GPU: real SDXL architecture, random weights

The frozen models are those the cache stage loads (no UNet), in its dtypes (pea.models.loading.place_frozen:
bf16 encoders, the fp32 SDXL VAE). The process is capped at --gpu-gb with torch's per-process memory
fraction, the batch is cache_batch_size(side, VAE dtype, --gpu-gb), and a few feature batches are timed.
The last line is one JSON object: the batch, CUDA's peak allocation against the cap, images/s.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from kd_step import frozen_models
from pea.features import FeatureExtractor
from pea.models.precision import cache_batch_size


def run(args) -> dict:
    device = torch.device("cuda")
    preset, pipe, student = frozen_models(args.preset, device, Path("pea-data/models"))
    pipe.register_modules(unet=None)  # the cache stage loads no UNet
    torch.cuda.empty_cache()
    cap = args.gpu_gb * 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / torch.cuda.get_device_properties(device).total_memory))
    side = args.side or preset.resolution
    batch = cache_batch_size(side, pipe.vae.dtype, cap)
    extractor = FeatureExtractor(pipe, student)
    images = torch.rand(batch, 3, side, side, device=device) * 2 - 1
    captions = ["a watercolour painting of a red fox in the snow"] * batch
    culture = torch.zeros(batch, dtype=torch.bool, device=device)
    torch.cuda.reset_peak_memory_stats()
    extractor(images, captions, captions, culture)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.reps):
        extractor(images, captions, captions, culture)
    torch.cuda.synchronize()
    return {"preset": preset.name, "gpu": torch.cuda.get_device_name(), "side": side, "vae_dtype": str(pipe.vae.dtype),
            "gpu_gb_cap": args.gpu_gb, "cache_batch": batch,
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "images_per_s": round(batch * args.reps / (time.perf_counter() - start), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sdxl")
    parser.add_argument("--gpu-gb", type=float, default=40)
    parser.add_argument("--side", type=int, default=None, help="image side in pixels (default: preset's)")
    parser.add_argument("--reps", type=int, default=3)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
