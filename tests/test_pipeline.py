"""The main job on one machine: every stage, on the tiny preset with toy-world data."""

import pytest
from mlflow import MlflowClient

from pea.adapter import load_adapter
from pea.evaluate.config import EvalConfig
from pea.languages import get_language
from pea.pipeline import run_language
from pea.profiles import load_profile
from pea.train.config import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_train_language_runs_every_stage(tmp_path):
    import ray

    profile = load_profile("local", env={"PEA_PRESET": "tiny-sdxl"}, cwd=tmp_path)
    lines = []
    train = TrainConfig(steps=10, batch_size=8, log_every=5, checkpoint_every=5, progress="log")
    try:
        result = run_language(get_language("ko"), profile, echo=lines.append, train=train, toy_samples=120,
                              evaluation=EvalConfig(max_prompts=2, steps=2))
    finally:
        ray.shutdown()
    storage = profile.storage()
    assert storage.exists("ko", "raw", "toy-parallel", "manifest.json")
    assert storage.exists("ko", "raw", "toy-culture", "manifest.json")
    shards = storage.read_json("ko", "shards", "manifest.json")
    assert shards["samples"] == 120 and shards["dropped"] == {"broken": 0, "tiny": 0, "no_caption": 0}
    assert storage.read_json("ko", "captions", "manifest.json")["counts"] == {"parallel": 102, "culture": 18}
    adapter = load_adapter(tmp_path / "pea-data" / "storage" / "ko" / "adapters" / "pea-ko-tiny-sdxl")
    assert adapter.config.language == "ko"
    run = MlflowClient(profile.mlflow_tracking_uri).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert any(line.startswith("  train: 10 steps") for line in lines)
    assert storage.exists("ko", "eval", "pea-ko-tiny-sdxl", "index.html")
    assert result["version"] == "1" and result["promoted"]
    assert lines[-1].startswith("  register: pea-ko version 1 is champion (no champion yet)")
