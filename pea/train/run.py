"""Build and run the Ray Train job for one language from a profile and a TrainConfig (the driver side).

One MLflow run per training job: the driver creates it, or finds it again when the same run name is
resubmitted, and rank 0 logs into it; Ray Train resumes the job itself from the last checkpoint under
<storage>/<lang>/train/<run name> (Train V2: the same storage_path and name continue the run). With a profile
that has a Ray Jobs API, the driver is a Ray job on the cluster (pea.train.jobs submits pea.train.entry, which
runs this code there), so the run outlives the process that asked for it.
"""

import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pea import tracking
from pea.adapter import CONFIG, WEIGHTS, AdapterConfig
from pea.baselines import PART_FILES
from pea.compress.student import STUDENT_FILES
from pea.data.index import index_file
from pea.cluster import connect
from pea.errors import PeaError
from pea.languages import Language
from pea.layout import adapter_dir, features_dir, shards_dir, train_dir
from pea.locks import stage_lock
from pea.presets import Preset
from pea.profiles import Profile
from pea.train.checkpoint import RUN_CONFIG
from pea.train.config import TrainConfig, TrainJob, TrainSwitches

log = logging.getLogger("pea.train")


@dataclass(frozen=True)
class TrainResult:
    run_name: str
    mlflow_run_id: str
    adapter_uri: str  # the final adapter under the storage root
    checkpoint_path: str
    steps: int
    metrics: dict


REVISION_FILE = Path(__file__).parents[2] / "REVISION"  # the image writes it at build time (infra/Dockerfile)


def code_revision() -> str:
    """The commit this code is: the image's REVISION file (an image has no .git), else git's HEAD."""
    if REVISION_FILE.is_file():
        return REVISION_FILE.read_text().strip() or "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _data(profile: Profile, language: Language, preset_name: str) -> tuple[tuple[str, ...], bool, dict]:
    storage = profile.storage()
    features = features_dir(language.code, preset_name)
    if storage.exists(*features, "manifest.json"):
        manifest = storage.read_json(*features, "manifest.json")
        _features_of_the_shards(storage, language.code, manifest)
        return features, True, manifest
    if storage.exists(*shards_dir(language.code), "manifest.json"):
        return shards_dir(language.code), False, storage.read_json(*shards_dir(language.code), "manifest.json")
    raise PeaError(f"no training shards for {language.code!r} under {storage.root}",
                   f"run the data stages first (pea harvest/translate/bucket --lang {language.code})")


def _features_of_the_shards(storage, lang: str, features: dict) -> None:
    """Cached features of other shards than the bucket stage's last (another bucket config, a new harvest) would
    train on data the shards manifest no longer describes."""
    if not storage.exists(*shards_dir(lang), "manifest.json"):
        return
    if features["source_digest"] != storage.read_json(*shards_dir(lang), "manifest.json")["digest"]:
        raise PeaError(f"the {lang} features were cached from other shards than the bucket stage's last ones",
                       f"run `pea cache --lang {lang}` (the flow does) to cache the current shards")


def flatten(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out |= flatten(f"{prefix}.{k}" if prefix else k, v)
        return out
    return {prefix: str(value)}


def mlflow_run(profile: Profile, language: Language, run_name: str, params: dict, tags: dict) -> str:

    from pea.tracking import TRAIN_RUN_TAG, experiment_id, find_train_run

    found = find_train_run(profile.mlflow_tracking_uri, language.code, run_name)
    if found:
        return found.info.run_id
    client = tracking.client(profile.mlflow_tracking_uri)
    experiment = experiment_id(profile.mlflow_tracking_uri, profile.mlflow_artifact_root, language.code)
    run = client.create_run(experiment, run_name=run_name, tags=tags | {TRAIN_RUN_TAG: run_name})
    items = list(params.items())
    for start in range(0, len(items), 100):
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in items[start : start + 100]])
    return run.info.run_id


def adapter_config(language: Language, preset: Preset, cfg: TrainConfig) -> AdapterConfig:
    """The adapter a job trains (a baseline's bridge): the student encoder's width in (the run's encoder variant's,
    which the config records for inference to load), the preset's context (and pooled) width out."""
    spec = preset.student_for(language, cfg.encoder_variant)
    return AdapterConfig(input_dim=spec.hidden_size, context_dim=preset.context_dim, pooled_dim=preset.pooled_dim,
                         hidden_dims=cfg.for_preset(preset).adapter_hidden, language=language.code,
                         student_encoder=spec.id, encoder_variant=cfg.encoder_variant,
                         base_model=preset.model_id or preset.name)


def train_adapter(profile: Profile, language: Language, preset: Preset, cfg: TrainConfig,
                  switches: TrainSwitches = TrainSwitches(), override_config: bool = False,
                  job_log: Callable[[str], None] | None = None) -> TrainResult:
    """Train with a profile that has a Ray Jobs API (`ray.jobs_address`) as a Ray job that outlives this process
    (pea.train.jobs: a second call of one run name attaches to its job; `job_log` gets the job's log lines);
    else `_train_adapter` in this process under its run's lock (pea.locks): a second submission of one run
    name waits for the first instead of racing it on the same checkpoints and run config. Other run names train
    side by side."""
    preset.student_for(language, cfg.encoder_variant)  # a variant the language or preset lacks fails before a job
    recipe_fits(cfg, preset)
    _student_exists(profile, language, cfg)
    cfg = cfg.model_copy(update={"run_name": cfg.job_name(language.code, preset.name)})
    if profile.ray.jobs_address:
        from pea.train.jobs import train_as_job

        return train_as_job(profile, language, preset, cfg, switches, override_config, job_log)
    with stage_lock(profile.storage(), language.code, f"train-{cfg.run_name}"):
        return _train_adapter(profile, language, preset, cfg, switches, override_config)


def recipe_fits(cfg: TrainConfig, preset: Preset) -> None:
    """A compression recipe is written for one UNet family: another preset's teacher fails here, not on a worker."""
    from pea.compress.recipes import get_recipe, registry

    if cfg.recipe is not None and get_recipe(cfg.recipe).family != preset.family:
        fitting = [name for name, r in registry().items() if r.family == preset.family]
        raise PeaError(f"compression recipe {cfg.recipe!r} is for {get_recipe(cfg.recipe).family} UNets, preset "
                       f"{preset.name!r} is {preset.family}", f"use one of: {', '.join(fitting)}")


def _student_exists(profile: Profile, language: Language, cfg: TrainConfig) -> None:
    """An adapter distilled against a student (`unet_from`) needs that compression run's finished student."""
    from pea.compress.student import STUDENT_FILES

    if cfg.unet_from is None:
        return
    if not profile.storage().exists(*adapter_dir(language.code, cfg.unet_from, *STUDENT_FILES[1].split("/"))):
        raise PeaError(f"no student UNet of compression run {cfg.unet_from!r} for {language.code!r}",
                       f"run `pea compress --recipe <recipe> --lang {language.code}` first (its run name is the "
                       "unet_from to give)")


def _train_adapter(profile: Profile, language: Language, preset: Preset, cfg: TrainConfig,
                   switches: TrainSwitches, override_config: bool) -> TrainResult:
    """Train `language`'s adapter on `preset` with the profile's Ray workers; the same run name resumes its job,
    and only with the config it started with (unless `override_config`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from pea.models.loading import encoder_source, pipeline_source
    from pea.train.loop import WorkerLoop

    cfg = cfg.for_preset(preset)
    spec = preset.student_for(language, cfg.encoder_variant)
    # tiny models are built once here, not raced by the workers
    pipeline_source(preset, profile.model_cache)
    encoder_source(spec, profile.model_cache)
    prefix, cached, manifest = _data(profile, language, preset.name)
    index = index_file(profile.storage(), prefix, manifest)  # the workers read the shards from it
    run_name = cfg.job_name(language.code, preset.name)
    adapter = adapter_config(language, preset, cfg)
    data_digest = manifest.get("source_digest", manifest["digest"])
    identity = {"lang": language.code, "preset": preset.name, "data_digest": data_digest, "cached_features": cached,
                "adapter": adapter.model_dump(mode="json"), "train": cfg.identity()}
    _same_config(profile.storage(), language.code, run_name, identity, override_config)
    run_id = mlflow_run(profile, language, run_name, params=flatten("", identity),
                         tags=run_tags(language, preset, cfg, data_digest))
    job = TrainJob(lang=language.code, run_name=run_name, preset=preset.name, model_cache=str(profile.model_cache),
                   storage_root=profile.storage_root, s3_endpoint_url=profile.s3.endpoint_url, data_prefix=prefix,
                   cached=cached, index=index, adapter=adapter, train=cfg, switches=switches,
                   config=identity, mlflow_run_id=run_id)
    storage = profile.storage()
    storage_path = storage.uri(*train_dir(language.code))
    storage.makedirs(*train_dir(language.code))
    connect(profile)
    trainer = TorchTrainer(
        WorkerLoop(profile.mlflow_tracking_uri),
        train_loop_config={"job": job.model_dump(mode="json")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=profile.ray.num_workers, use_gpu=profile.ray.use_gpu,
            resources_per_worker={"CPU": profile.ray.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=_pyarrow_fs(profile),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        _finish_run(profile, run_id, "FAILED")
        raise PeaError(f"training {run_name} failed: {_root_message(e)}",
                       "fix the cause and run again with the same run name to continue from the last checkpoint") from e
    return _finalize(profile, language, run_name, run_id, result)


def run_tags(language: Language, preset: Preset, cfg: TrainConfig, data_digest: str) -> dict[str, str]:
    """A training job's MLflow tags: what registration copies onto its version and what the stages dispatch on
    (pea.method, pea.recipe)."""
    return {"pea.lang": language.code, "pea.preset": preset.name, "pea.data_digest": data_digest,
            "pea.code_revision": code_revision(), "pea.student_encoder": preset.student_for(language, cfg.encoder_variant).id,
            "pea.encoder_variant": cfg.encoder_variant or "default", "pea.method": cfg.method,
            **({"pea.recipe": cfg.recipe} if cfg.recipe else {})}


def _same_config(storage, lang: str, run_name: str, identity: dict, override: bool) -> None:
    """A run name is one job: the first submission records its config; a resubmission (resume) must match it."""
    parts = train_dir(lang, run_name, RUN_CONFIG)
    if storage.exists(*parts) and not override:
        before, now = flatten("", storage.read_json(*parts)), flatten("", identity)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise PeaError(f"run {run_name!r} was started with another config ({', '.join(changed[:4])} differ)",
                           "use a new run name, or override the check to continue with this config")
    storage.write_json(identity, *parts)


def _root_message(error: BaseException) -> str:
    """The workers' own error, out of Ray's wrapping: a PeaError's problem, else the exception's first line."""
    for failure in sorted(getattr(error, "worker_failures", {}).items()):
        exc = failure[1]
        if isinstance(exc, PeaError):
            return exc.problem
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return str(error).splitlines()[0]


def _pyarrow_fs(profile: Profile):
    if not profile.storage_root.startswith("s3://"):
        return None
    import pyarrow.fs

    endpoint = profile.s3.endpoint_url
    kwargs = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs = {"endpoint_override": host, "scheme": scheme}
    return pyarrow.fs.S3FileSystem(**kwargs)


def _finish_run(profile: Profile, run_id: str, status: str) -> None:

    tracking.client(profile.mlflow_tracking_uri).set_terminated(run_id, status)


def _finalize(profile, language, run_name, run_id, result) -> TrainResult:
    import json

    with result.checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / "state.json").read_text())
        save_output(profile, language, run_name, run_id, Path(folder))
    tracking.client(profile.mlflow_tracking_uri).set_terminated(run_id, "FINISHED")
    return TrainResult(run_name=run_name, mlflow_run_id=run_id,
                       adapter_uri=profile.storage().uri(*adapter_dir(language.code, run_name)),
                       checkpoint_path=result.checkpoint.path, steps=state["step"], metrics=result.metrics or {})


def save_output(profile: Profile, language: Language, run_name: str, run_id: str, folder: Path) -> None:
    """A finished job's output from its last checkpoint `folder`: the adapter (with a baseline's UNet part), or a
    compression job's student alone, under adapter_dir and among its MLflow run's artifacts (OUTPUT_ARTIFACTS).
    The adapter weights (the student's) are written last: the flow takes them as the mark of a finished job."""
    import tempfile

    storage = profile.storage()
    files = [name for name in (CONFIG, *PART_FILES, WEIGHTS, *STUDENT_FILES) if (folder / name).is_file()]
    for name in files:
        storage.write_bytes((folder / name).read_bytes(), *adapter_dir(language.code, run_name, *name.split("/")))
    with tempfile.TemporaryDirectory() as tmp:
        for name in files:
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_bytes((folder / name).read_bytes())
        tracking.client(profile.mlflow_tracking_uri).log_artifacts(run_id, tmp, artifact_path=tracking.OUTPUT_ARTIFACTS)
