"""Cost of one KD step, in UNet forwards, against the reference way of writing it.

    uv run python benchmarks/kd_step.py --preset tiny-sdxl          # CPU, tiny preset, < 2 minutes
    python benchmarks/kd_step.py --preset sdxl --batch 4            # GPU: real SDXL architecture,
                                                                    # random weights (no download)
    python benchmarks/kd_step.py --preset sdxl --memory-batches 1,2,4,8  # GPU: peak memory per batch size

Variants, each timed as the median of --reps runs after --warmup:
  unet_forward        one UNet forward on the batch (no grad): the unit
  kd_step_cached      pea's step on cached features: one frozen UNet, teacher under no_grad, backward
                      through activations to the adapter only (floor: ~3 forwards)
  kd_step_online      the same, running the VAE and the text encoders every step
  kd_step_reference   the reference code's way: two UNet copies, UNet weight gradients left on,
                      VAE and text encoders every step
Timing interleaves the variants round-robin. Peak memory per variant: CUDA's allocator peak on a GPU; on
a CPU, the resident-set growth of a fresh process running that variant alone.
The last line is one JSON object.
"""

import argparse
import copy
import functools
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import torch

from pea.adapter import AdapterConfig, PEAAdapter
from pea.distill import HookedUNet, KDConfig, kd_step, training_scheduler
from pea.features import FeatureExtractor
from pea.kd_types import KDBatch
from pea.languages import EncoderSpec, get_language
from pea.models.encoders import TextEncoder, load_text_encoder
from pea.models.loading import load_frozen_pipeline, place_frozen
from pea.models.precision import default_device
from pea.models.tiny import make_pipeline
from pea.presets import get_preset

KD = KDConfig(cfg_dropout=0.0)  # every sample distilled: the step the floor of ~3 forwards describes


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory of a block above what the process held when it started (CPU runs)."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.mb = (self.peak - self.base) / 2**20


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved_medians(variants: dict, device, warmup: int, reps: int) -> dict[str, float]:
    """Round-robin over the variants so that drift in machine speed hits them all alike."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _peak_mb(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakRSS() as mem:
        fn()
    return mem.mb


def frozen_models(preset_name: str, device, model_cache: Path):
    """The frozen models in the dtypes a training run gives them (pea.models.loading.place_frozen)."""
    preset = get_preset(preset_name)
    if preset.is_built_locally:
        pipe = load_frozen_pipeline(preset, model_cache, device)
        student = load_text_encoder(preset.student_for(get_language("ko")), model_cache)
    else:
        # the real architecture from the shipped configs, random weights; the student is a copy of the
        # teacher's last encoder (SDXL's second: the size class of a 1024-d language CLIP; SD1.5's only one)
        with torch.device(device):
            pipe = make_pipeline(preset_name)
        last = "_2" if "text_encoder_2" in pipe.components else ""
        encoder, tokenizer = getattr(pipe, f"text_encoder{last}"), getattr(pipe, f"tokenizer{last}")
        spec = EncoderSpec(id="random", loader="transformers:CLIPTextModel", tokenizer="transformers:CLIPTokenizer",
                           hidden_size=encoder.config.hidden_size, max_tokens=77)
        student = TextEncoder(spec, tokenizer, copy.deepcopy(encoder))
        pipe = place_frozen(pipe, preset.family, device)
    student.model.to(device, pipe.text_encoder.dtype)
    if device.type == "cpu":
        pipe.unet.to(memory_format=torch.channels_last)
    return preset, pipe, student


def run(args) -> dict:
    device = torch.device(args.device or default_device())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # autocast, as the training loop
    torch.set_num_threads(args.threads or torch.get_num_threads())
    preset, pipe, student = frozen_models(args.preset, device, Path(args.model_cache))
    if args.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    side = args.resolution or preset.resolution
    B = args.batch
    extractor = FeatureExtractor(pipe, student)
    adapter = PEAAdapter(AdapterConfig(input_dim=student.hidden_size, context_dim=preset.context_dim,
                                       pooled_dim=preset.pooled_dim, hidden_dims=preset.adapter_hidden)).to(device)  # fp32, as trained
    noise = training_scheduler(pipe.scheduler.config)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-5)
    gen = torch.Generator(device).manual_seed(0)
    images = torch.rand(B, 3, side, side, device=device) * 2 - 1
    english = ["a watercolour painting of a red fox in the snow"] * B
    native = ["눈 속의 붉은 여우 수채화"] * B
    culture = torch.zeros(B, dtype=torch.bool, device=device)
    batch = extractor(images, english, native, culture)
    null = extractor.null()
    unet = HookedUNet(pipe.unet, KD.feature_blocks)

    def step(b):
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            result = kd_step(unet, adapter, noise, b, null, KD, gen)
        result.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def forward():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            unet(batch.latents, torch.full((B,), 500, device=device), adapter(batch.student_states, batch.student_mask),
                 batch.time_ids, features=False)

    teacher_unet = None

    def reference():
        nonlocal teacher_unet
        if teacher_unet is None:  # the reference keeps a second UNet and leaves UNet gradients on
            teacher_unet = HookedUNet(copy.deepcopy(pipe.unet), KD.feature_blocks)
        pipe.unet.requires_grad_(True)
        try:
            b = extractor(images, english, native, culture)
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                result = kd_step(unet, adapter, noise, b, null, KD, gen, teacher_unet=teacher_unet)
            result.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            pipe.unet.zero_grad(set_to_none=True)
        finally:
            pipe.unet.requires_grad_(False)

    variants = {
        "unet_forward": forward,
        "kd_step_cached": lambda: step(batch),
        "kd_step_online": lambda: step(extractor(images, english, native, culture)),
        "kd_step_reference": reference,
    }
    if args.memory_batches:
        return {"preset": preset.name, "resolution": side, "gradient_checkpointing": args.gradient_checkpointing,
                "kd_step_cached_peak_mb_by_batch": _peak_by_batch(step, batch, args.memory_batches, device)}
    if args.memory_of:  # a fresh process per variant, so that no earlier variant's memory hides its peak
        return {"peak_mb": _peak_mb(variants[args.memory_of], device)}
    results = {f"{k}_ms": v for k, v in _interleaved_medians(variants, device, args.warmup, args.reps).items()}
    if device.type == "cuda":
        peaks = {name: _peak_mb(fn, device) for name, fn in variants.items()}
    else:
        with ThreadPoolExecutor(len(variants)) as pool:  # one process each, side by side: peaks do not add up
            peaks = dict(zip(variants, pool.map(_peak_in_subprocess, variants)))
    return {
        "preset": preset.name, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype).removeprefix("torch."),
        "batch": B, "resolution": side, "gradient_checkpointing": args.gradient_checkpointing,
        "adapter_params": adapter.num_parameters(),
        **{k: round(v, 2) for k, v in results.items()},
        "kd_step_unet_forwards": round(results["kd_step_cached_ms"] / results["unet_forward_ms"], 2),
        "speedup_vs_reference": round(results["kd_step_reference_ms"] / results["kd_step_cached_ms"], 2),
        "peak_mem_mb": {k: round(v, 1) for k, v in peaks.items()},
    }


def _peak_by_batch(step, batch, sizes: str, device) -> dict[int, float | str]:
    """Peak memory of one cached KD step at each batch size (the features of `batch` repeated; GPU only):
    what per-worker batch a GPU of a given size holds."""
    if device.type != "cuda":
        raise SystemExit("--memory-batches measures CUDA's allocator: run it on a GPU")
    peaks = {}
    for size in (int(b) for b in sizes.split(",")):
        try:
            peaks[size] = round(_peak_mb(functools.partial(step, _repeat(batch, size)), device), 1)
        except torch.cuda.OutOfMemoryError:
            peaks[size] = "out of memory"
        torch.cuda.empty_cache()
    return peaks


def _repeat(batch: KDBatch, size: int) -> KDBatch:
    """`batch` cycled to `size` samples (every field along dim 0)."""
    index = torch.arange(size) % len(batch.keys)
    tensors = {f.name: getattr(batch, f.name) for f in fields(batch) if f.name != "keys"}
    cycled = {name: x if x is None else x[index.to(x.device)] for name, x in tensors.items()}
    return KDBatch(**cycled, keys=[str(i) for i in range(size)])


def _peak_in_subprocess(variant: str) -> float:
    argv = [a for a in sys.argv[1:]] + ["--memory-of", variant]
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-sdxl")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: preset's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-cache", default="pea-data/models")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as TrainConfig.gradient_checkpointing")
    parser.add_argument("--memory-batches", default=None, help="e.g. 1,2,4,8: peak memory of a cached step at each")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
