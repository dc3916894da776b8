"""The benchmark scripts run and report every number they promise (their speed is not asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kd_step_benchmark_reports_every_number(tmp_path, model_cache):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kd_step.py"), "--preset", "tiny-sdxl", "--batch", "2",
         "--warmup", "0", "--reps", "1", "--model-cache", str(model_cache)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("unet_forward_ms", "kd_step_cached_ms", "kd_step_online_ms", "kd_step_reference_ms"):
        assert result[key] > 0
    assert set(result["peak_mem_mb"]) == {"unet_forward", "kd_step_cached", "kd_step_online", "kd_step_reference"}
    assert result["kd_step_unet_forwards"] > 1 and result["speedup_vs_reference"] > 0


@pytest.mark.slow
def test_data_benchmark_reports_every_number(tmp_path, model_cache):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data.py"), "--images", "12", "--loader-images", "48",
         "--batch", "4", "--model-cache", str(model_cache), "--pipeline-images", "32", "--bomb-side", "3000"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("bucket_images_per_s_per_core", "pil_floor_images_per_s_per_core", "loader_batches_per_s",
                "kd_step_batches_per_s"):
        assert result[key] > 0
    assert result["bucket_vs_floor"] > 0 and result["loader_headroom"] > 0
    assert result["pipeline_images_per_s_1w"] > 0 and result["pipeline_images_per_s_2w"] > 0
    assert result["ray_scaling_efficiency"] > 0
    # SDXL's latent shape at 512 px in fp16: mean and std (2 x 32768 bytes), the JSON and tar's headers
    assert 65536 < result["cache_bytes_per_sample_512"] <= 70000
    assert 0 < result["harvest_peak_mb"] < 1500
