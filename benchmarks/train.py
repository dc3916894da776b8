"""Training throughput: samples/s with 1 and 2 Ray Train workers on this machine (scaling efficiency),
and on a GPU the SDXL-at-1024 px rate per GPU against the paper's and the floor's.

    uv run python benchmarks/train.py                 # CPU: tiny-sdxl, 1 vs 2 workers
    python benchmarks/train.py --sdxl                 # GPU: adds sdxl_1024_samples_per_s_per_gpu

The paper's run (Sec. 4.3): 64 A100 x batch 5 x 70k steps in 1600 GPU hours = 3.9 samples/s per A100. The
floor: 3 UNet passes per sample at 6.76 TFLOPs each (1024 px), at the GPU's measured bf16 matmul rate.
The last line is one JSON object.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pea.presets import get_preset


def samples_per_s(profile, steps: int, batch: int, run: str) -> float:
    from mlflow import MlflowClient

    from pea.languages import get_language
    from pea.train.config import TrainConfig, TrainSwitches
    from pea.train.run import train_adapter

    result = train_adapter(profile, get_language("ko"), get_preset("tiny-sdxl"),
                           TrainConfig(steps=steps, batch_size=batch, log_every=max(1, steps // 4),
                                       checkpoint_every=steps, run_name=run), TrainSwitches(progress="log"))
    history = MlflowClient(profile.mlflow_tracking_uri).get_metric_history(result.mlflow_run_id, "samples_per_s")
    return statistics.median(m.value for m in sorted(history, key=lambda m: m.step)[1:])  # the first window warms up


def cpu_scaling(steps: int, batch: int, images: int) -> dict:
    """Ray Train on tiny-sdxl with 1 and 2 CPU workers: the real job (data stages, DDP, MLflow)."""
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from data_helpers import make_folder

    from pea.data.sources import SourceSpec
    from pea.data.translate import translate
    from pea.languages import get_language
    from pea.profiles import load_profile
    from pea.stages import bucket_stage, cache_stage, harvest_stage

    tiny = get_preset("tiny-sdxl")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rates = {}
        for workers in (1, 2):
            env = {"PEA_RAY__NUM_WORKERS": str(workers), "PEA_DATA_DIR": str(tmp / "data")}
            profile = load_profile("local", env=env, cwd=tmp)
            if workers == 1:
                ko = get_language("ko")
                harvest_stage(profile, ko, SourceSpec(name="bench", kind="folder", uri=str(make_folder(tmp / "imgs", n=images))))
                translate(profile.storage(), "ko", "kor_Hang", "none", lambda: None)
                bucket_stage(profile, ko, tiny)
                cache_stage(profile, ko, tiny, batch_size=32)
            rates[workers] = samples_per_s(profile, steps, batch, f"bench-{workers}w")
            ray.shutdown()
    return {"samples_per_s_1w": round(rates[1], 1), "samples_per_s_2w": round(rates[2], 1),
            "scaling_efficiency": round(rates[2] / (2 * rates[1]), 3)}


def sdxl_gpu(batch: int, steps: int) -> dict:
    """KD steps on the real SDXL UNet architecture at 1024 px (128x128 latents), cached-feature shapes."""
    from pea.adapter import AdapterConfig, PEAAdapter
    from pea.distill import HookedUNet, KDConfig, kd_step, training_scheduler
    from pea.kd_types import KDBatch, NullConditioning
    from pea.models.loading import place_frozen
    from pea.models.tiny import make_pipeline

    device, preset = torch.device("cuda"), get_preset("sdxl")
    with torch.device(device):
        pipe = place_frozen(make_pipeline("sdxl"), preset.family, device)  # the training run's dtypes
    unet = HookedUNet(pipe.unet)
    adapter = PEAAdapter(AdapterConfig(input_dim=1024, context_dim=preset.context_dim, pooled_dim=preset.pooled_dim,
                                       hidden_dims=preset.adapter_hidden)).to(device)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-5)
    B = batch
    batch_ = KDBatch(latents=torch.randn(B, 4, 128, 128, device=device, dtype=torch.bfloat16),
                     teacher_context=torch.randn(B, 77, 2048, device=device, dtype=torch.bfloat16),
                     teacher_pooled=torch.randn(B, 1280, device=device, dtype=torch.bfloat16),
                     student_states=torch.randn(B, 77, 1024, device=device), student_mask=torch.ones(B, 77, device=device),
                     culture=torch.zeros(B, dtype=torch.bool, device=device),
                     time_ids=torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * B, device=device, dtype=torch.bfloat16),
                     keys=[str(i) for i in range(B)])
    null = NullConditioning(torch.randn(1, 77, 2048, device=device, dtype=torch.bfloat16),
                            torch.randn(1, 77, 1024, device=device), torch.ones(1, 77, device=device))
    noise = training_scheduler(pipe.scheduler.config)
    cfg = KDConfig(cfg_dropout=0.0)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            r = kd_step(unet, adapter, noise, batch_, null, cfg)
        r.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    rate = B * steps / (time.perf_counter() - start)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    tflops = 20 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    floor = tflops / (3 * 6.76)
    return {"sdxl_1024_samples_per_s_per_gpu": round(rate, 2), "paper_samples_per_s_per_a100": 3.89,
            "floor_samples_per_s_per_gpu": round(floor, 2), "matmul_tflops": round(tflops, 1),
            "sdxl_vs_floor": round(rate / floor, 3), "gpu": torch.cuda.get_device_name()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--sdxl", action="store_true", help="also time SDXL at 1024 px on the GPU")
    parser.add_argument("--sdxl-batch", type=int, default=4)
    parser.add_argument("--no-cpu-scaling", action="store_true", help="only the GPU part (needs no Ray or MLflow)")
    args = parser.parse_args()
    out = {} if args.no_cpu_scaling else cpu_scaling(args.steps, args.batch, args.images)
    if args.sdxl:
        out |= sdxl_gpu(args.sdxl_batch, steps=10)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
