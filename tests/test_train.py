"""Ray Train on 2 CPU workers (gloo) with the tiny preset; Ray runs on 127.0.0.1 and is stopped at the end."""

import io
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from data_helpers import make_folder
from pea.adapter import load_adapter
from pea.data.sources import SourceSpec
from pea.data.tars import iter_samples, write_shard
from pea.data.translate import translate
from pea.errors import PeaError
from pea.languages import get_language
from pea.profiles import load_profile
from pea.stages import bucket_stage, cache_stage, harvest_stage
from pea.train.config import TrainConfig
from pea.train.run import train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KO = get_language("ko")
FAST = dict(batch_size=4, log_every=5, checkpoint_every=10, progress="log", lr=3e-3, warmup_steps=2)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model_cache, ray_local):
    """Cached features of 64 small images, in a storage root that the tests copy from."""
    root = tmp_path_factory.mktemp("train")
    env = {"PEA_RAY__NUM_WORKERS": "2", "PEA_DATA_DIR": str(root / "data"), "PEA_PRESET": "tiny-sdxl"}
    profile = load_profile("local", env=env, cwd=root)
    harvest_stage(profile, KO, SourceSpec(name="local", kind="folder", uri=str(make_folder(root / "imgs", n=64))))
    translate(profile.storage(), "ko", "kor_Hang", "none", lambda: None)
    bucket_stage(profile, KO)
    cache_stage(profile, KO)
    return profile


def _profile(dataset, tmp_path):
    """A fresh MLflow database and train folder, the shared (read-only) shards."""
    env = {"PEA_RAY__NUM_WORKERS": "2", "PEA_DATA_DIR": str(dataset.data_dir), "PEA_PRESET": "tiny-sdxl",
           "PEA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    return load_profile("local", env=env, cwd=tmp_path)


def _history(profile, run_id, key):
    return [(m.step, m.value) for m in MlflowClient(profile.mlflow_tracking_uri).get_metric_history(run_id, key)]


def _weights(folder) -> dict:
    return load_adapter(Path(folder)).state_dict()


def test_two_workers_learn_and_the_checkpoint_loads_back(dataset, tmp_path):
    profile = _profile(dataset, tmp_path)
    result = train_adapter(profile, KO, TrainConfig(steps=30, run_name="basic", **FAST))
    assert result.steps == 30
    kd = [v for _, v in _history(profile, result.mlflow_run_id, "feature_kd")]
    assert len(kd) == 6 and kd[-1] < 0.7 * kd[0]
    exported = _weights(result.adapter_uri)
    checkpoint = _weights(result.checkpoint_path)
    assert all(torch.equal(exported[k], checkpoint[k]) for k in exported)
    run = MlflowClient(profile.mlflow_tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["train.steps"] == "30" and run.info.status == "FINISHED"
    assert run.data.tags["pea.data_digest"] and "pea.code_revision" in run.data.tags
    assert {"lr", "samples_per_s", "output_kd", "loss"} <= set(run.data.metrics)
    artifacts = {a.path for a in MlflowClient(profile.mlflow_tracking_uri).list_artifacts(result.mlflow_run_id, "adapter")}
    assert artifacts == {"adapter/adapter.json", "adapter/adapter.safetensors"}
    pytest.shared_basic = exported  # the uninterrupted reference for the fault test


def test_a_worker_dies_and_the_job_finishes_from_the_last_checkpoint(dataset, tmp_path):
    profile = _profile(dataset, tmp_path)
    result = train_adapter(profile, KO, TrainConfig(steps=30, run_name="chaos", fault_at_step=15, max_failures=1, **FAST))
    assert result.steps == 30
    steps = [s for s, _ in _history(profile, result.mlflow_run_id, "step")]
    assert steps == [5, 10, 15, 20, 25, 30]  # 15 onwards logged once, by the attempt that resumed from 10
    client = MlflowClient(profile.mlflow_tracking_uri)
    assert len(client.search_runs([client.get_experiment_by_name("pea-ko").experiment_id])) == 1
    for folder in Path(result.checkpoint_path).parent.glob("step-*"):
        load_adapter(folder)  # every kept checkpoint is whole
    resumed = _weights(result.adapter_uri)
    reference = pytest.shared_basic
    assert all(torch.allclose(resumed[k], reference[k], atol=1e-6) for k in reference)


def test_a_stopped_job_resubmitted_with_the_same_name_continues(dataset, tmp_path):
    profile = _profile(dataset, tmp_path)
    with pytest.raises(PeaError, match="chaos drill"):
        train_adapter(profile, KO, TrainConfig(steps=30, run_name="resume", fault_at_step=15, max_failures=0, **FAST))
    result = train_adapter(profile, KO, TrainConfig(steps=30, run_name="resume", **FAST))
    assert result.steps == 30
    assert [s for s, _ in _history(profile, result.mlflow_run_id, "step")] == [5, 10, 15, 20, 25, 30]


def test_a_nan_sample_stops_the_run_naming_step_and_sample(dataset, tmp_path):
    profile = _profile(dataset, tmp_path)
    storage = profile.storage()
    prefix = ("ko", "features", "tiny-sdxl")
    manifest = storage.read_json(*prefix, "manifest.json")
    shard = manifest["shards"][0]
    original = storage.read_bytes(*prefix, *shard["path"].split("/"))
    samples = list(iter_samples(io.BytesIO(original), "t"))
    tensors = load_tensors(samples[0]["safetensors"])
    tensors["latents"] = torch.full_like(tensors["latents"], float("nan"))
    samples[0]["safetensors"] = save_tensors(tensors)
    storage.write_bytes(write_shard(samples), *prefix, *shard["path"].split("/"))
    try:
        with pytest.raises(PeaError) as e:
            train_adapter(profile, KO, TrainConfig(steps=40, run_name="nan", max_failures=0, **FAST))
        assert "non-finite loss at step" in str(e.value) and samples[0]["__key__"] in str(e.value)
        for folder in (Path(storage.path("ko", "train", "nan"))).glob("step-*"):
            load_adapter(folder)
        skipped = train_adapter(profile, KO, TrainConfig(steps=20, run_name="nan-skip", on_nonfinite="skip", **FAST))
        assert skipped.steps == 20 and all(torch.isfinite(v).all() for v in _weights(skipped.adapter_uri).values())
    finally:
        storage.write_bytes(original, *prefix, *shard["path"].split("/"))
