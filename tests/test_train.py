"""Ray Train on 2 CPU workers (gloo) with the tiny preset; Ray runs on 127.0.0.1 and is stopped at the end."""

import io
from pathlib import Path

import pytest
import torch
from dashboard_helpers import dashboard_series, free_port, scraped
from data_helpers import make_folder
from mlflow import MlflowClient
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pea.adapter import load_adapter
from pea.data.index import indexed_shards
from pea.data.sources import SourceSpec
from pea.data.tars import iter_samples, write_shard
from pea.data.translate import translate
from pea.errors import PeaError
from pea.languages import get_language
from pea.profiles import load_profile
from pea.stages import bucket_stage, cache_stage, harvest_stage
from pea.presets import get_preset
from pea.train.config import TrainConfig, TrainSwitches
from pea.train.run import train_adapter

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
FAST = dict(batch_size=4, log_every=5, checkpoint_every=10, lr=3e-3, warmup_steps=2)
LOG = TrainSwitches(progress="log")
DIE_AT_15 = TrainSwitches(progress="log", fault_at_step=15)


@pytest.fixture(scope="module")
def ray_local():
    """The module's local Ray, started as pea.train.run starts one, with its Prometheus metrics export on
    127.0.0.1 (reported every 0.5 s) for the dashboard test; yields the export's port."""
    import ray

    port = free_port()
    ray.shutdown()  # a Ray left running by an earlier module would lack the metrics export
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 500})
    yield port
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model_cache, ray_local):
    """Cached features of 64 small images, in a storage root that the tests copy from."""
    root = tmp_path_factory.mktemp("train")
    env = {"PEA_RAY__NUM_WORKERS": "2", "PEA_DATA_DIR": str(root / "data")}
    profile = load_profile("local", env=env, cwd=root)
    harvest_stage(profile, KO, SourceSpec(name="local", kind="folder", uri=str(make_folder(root / "imgs", n=64))))
    translate(profile.storage(), "ko", "kor_Hang", "none", lambda: None)
    bucket_stage(profile, KO, TINY)
    cache_stage(profile, KO, TINY, batch_size=32)
    return profile


def _profile(dataset, tmp_path):
    """A fresh MLflow database and train folder, the shared (read-only) shards."""
    env = {"PEA_RAY__NUM_WORKERS": "2", "PEA_DATA_DIR": str(dataset.data_dir),
           "PEA_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    return load_profile("local", env=env, cwd=tmp_path)


@pytest.fixture(scope="module")
def basic(dataset, tmp_path_factory, ray_local):
    """The uninterrupted reference run, trained once for the module (the fault test compares with its weights),
    with Prometheus scraped while it trains (the dashboard test): (profile, result, series seen)."""
    profile = _profile(dataset, tmp_path_factory.mktemp("basic"))
    with scraped(ray_local, dashboard_series()) as seen:
        result = train_adapter(profile, KO, TINY, TrainConfig(steps=30, run_name="basic", **FAST), LOG)
    return profile, result, seen


def _history(profile, run_id, key):
    return [(m.step, m.value) for m in MlflowClient(profile.mlflow_tracking_uri).get_metric_history(run_id, key)]


def _weights(folder) -> dict:
    return load_adapter(Path(folder)).state_dict()


def test_two_workers_learn_and_the_checkpoint_loads_back(basic):
    profile, result, _ = basic
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


def test_every_series_the_training_dashboard_queries_is_exported(basic):
    """dashboards/training.json charts only what training exports: every series it queries was scraped from
    Ray's metrics export while the reference run trained."""
    wanted, seen = dashboard_series(), basic[2]
    assert len(wanted) >= 6
    assert wanted <= seen, f"not exported: {sorted(wanted - seen)}"


def test_a_worker_dies_and_the_job_finishes_from_the_last_checkpoint(dataset, basic, tmp_path):
    profile = _profile(dataset, tmp_path)
    result = train_adapter(profile, KO, TINY, TrainConfig(steps=30, run_name="chaos", max_failures=1, **FAST), DIE_AT_15)
    assert result.steps == 30
    steps = [s for s, _ in _history(profile, result.mlflow_run_id, "step")]
    assert steps == [5, 10, 15, 20, 25, 30]  # 15 onwards logged once, by the attempt that resumed from 10
    client = MlflowClient(profile.mlflow_tracking_uri)
    assert len(client.search_runs([client.get_experiment_by_name("pea-ko").experiment_id])) == 1
    for folder in Path(result.checkpoint_path).parent.glob("step-*"):
        load_adapter(folder)  # every kept checkpoint is whole
    resumed = _weights(result.adapter_uri)
    reference = _weights(basic[1].adapter_uri)  # the uninterrupted run's
    assert all(torch.allclose(resumed[k], reference[k], atol=1e-6) for k in reference)


def test_a_stopped_job_resubmitted_with_the_same_name_continues(dataset, tmp_path):
    profile = _profile(dataset, tmp_path)
    with pytest.raises(PeaError, match="chaos drill"):
        train_adapter(profile, KO, TINY, TrainConfig(steps=30, run_name="resume", max_failures=0, **FAST), DIE_AT_15)
    with pytest.raises(PeaError, match=r"run 'resume' was started with another config \(train.lr differ\)"):
        train_adapter(profile, KO, TINY, TrainConfig(steps=30, run_name="resume", **(FAST | {"lr": 1e-3})), LOG)
    result = train_adapter(profile, KO, TINY, TrainConfig(steps=30, run_name="resume", **FAST), LOG)
    assert result.steps == 30
    assert [s for s, _ in _history(profile, result.mlflow_run_id, "step")] == [5, 10, 15, 20, 25, 30]


def test_a_nan_sample_stops_the_run_naming_step_and_sample(dataset, tmp_path):
    profile = _profile(dataset, tmp_path)
    storage = profile.storage()
    prefix = ("ko", "features", "tiny-sdxl")
    manifest = storage.read_json(*prefix, "manifest.json")
    shard = indexed_shards(storage, prefix, manifest)[0]
    original = storage.read_bytes(*prefix, *shard["path"].split("/"))
    samples = list(iter_samples(io.BytesIO(original), "t"))
    tensors = load_tensors(samples[0]["safetensors"])
    tensors["latent_mean"] = torch.full_like(tensors["latent_mean"], float("nan"))
    samples[0]["safetensors"] = save_tensors(tensors)
    storage.write_bytes(write_shard(samples), *prefix, *shard["path"].split("/"))
    try:
        with pytest.raises(PeaError) as e:
            train_adapter(profile, KO, TINY, TrainConfig(steps=40, run_name="nan", max_failures=0, **FAST), LOG)
        assert "non-finite loss at step" in str(e.value) and samples[0]["__key__"] in str(e.value)
        for folder in (Path(storage.path("ko", "train", "nan"))).glob("step-*"):
            load_adapter(folder)
        skip = TrainConfig(steps=20, run_name="nan-skip", on_nonfinite="skip", **FAST)
        skipped = train_adapter(profile, KO, TINY, skip, LOG)
        assert skipped.steps == 20 and all(torch.isfinite(v).all() for v in _weights(skipped.adapter_uri).values())
    finally:
        storage.write_bytes(original, *prefix, *shard["path"].split("/"))


def test_a_compression_job_distils_a_student_unet_through_a_worker_failure(dataset, tmp_path):
    """pea compress's job: the same engine (2 DDP workers, checkpoints, a rank dying at step 15 and the job
    resuming from step 10) trains the recipe's whole student, saved as a diffusers UNet folder."""
    from diffusers import UNet2DConditionModel

    from pea.compress.recipes import get_recipe
    from pea.compress.student import make_student
    from pea.models.loading import pipeline_source

    profile = _profile(dataset, tmp_path)
    cfg = TrainConfig(steps=20, method="compress", recipe="sdxl-midless", max_failures=1, **(FAST | {"lr": 1e-3}))
    result = train_adapter(profile, KO, TINY, cfg, DIE_AT_15)
    assert result.run_name == "pea-unet-sdxl-midless-tiny-sdxl" and result.steps == 20
    assert [s for s, _ in _history(profile, result.mlflow_run_id, "step")] == [5, 10, 15, 20]
    student, info = UNet2DConditionModel.from_pretrained(Path(result.adapter_uri) / "unet", output_loading_info=True)
    assert not any(info.values()) and student.mid_block is None
    # trained: every weight moved from the teacher's copy it started as (how well it learns: benchmarks/compress.py)
    teacher = UNet2DConditionModel.from_pretrained(pipeline_source(TINY, dataset.model_cache), subfolder="unet")
    start = make_student(teacher, get_recipe("sdxl-midless")).state_dict()
    weights = {k: v for k, v in student.state_dict().items() if v.dtype.is_floating_point}
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert sum(not torch.equal(v, start[k]) for k, v in weights.items()) > 0.9 * len(weights)
    saved = UNet2DConditionModel.from_pretrained(Path(result.checkpoint_path) / "unet")
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in student.state_dict().items())
    run = MlflowClient(profile.mlflow_tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.tags["pea.recipe"] == "sdxl-midless" and run.data.params["train.method"] == "compress"
    assert {"sd", "output_kd", "feature_kd"} <= set(run.data.metrics)
