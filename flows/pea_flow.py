"""The `pea` flow: one language, every stage, unattended. Deployment `train-language` in prefect.yaml.

    prefect deployment run pea/train-language --param lang=ko
    prefect deployment run pea/train-language --param lang=ko --param 'config={"train": {"method": "ukd"}}'
    uv run pea train-language --lang ko          # the same flow in-process (Prefect's temporary local API)

`config` is the whole RunConfig (pea/run_config.py): Prefect builds the parameter schema from it, so a
deployment run can set any field, and the server refuses an unknown language, preset or method, or a step
count below 1, before any work starts. Each training job gets its own run name (from the flow run), so a
scheduled re-run trains a new candidate on the cached data; retrying a failed flow run keeps the name and
resumes from the stage that failed (finished stages are cached, Ray Train resumes its checkpoint).

The run's log marks where each of the seven stages starts and ends (pea.progress records): the CLI shows them
as its stage line.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict

from pea.data.sources import SourceSpec
from pea.errors import PeaError
from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.stage import EvalSummary, Registration
from pea.languages import Language, get_language
from pea.languages import registry as languages
from pea.presets import Preset, get_preset
from pea.profiles import Profile, check_mlflow, load_profile
from pea.progress import STAGE, STAGE_DONE
from pea.run_config import RunConfig
from pea.stages import default_sources, harvested_sources
from pea.train.config import COMPRESS, TrainConfig, TrainSwitches
from tasks.data import bucket_shards, cache_features, harvest_source, translate_captions
from tasks.evaluation import evaluate_adapter, register_adapter
from tasks.progress import reporter
from tasks.training import train_adapter

Lang = StrEnum("Lang", {code: code for code in languages()})
STAGES = ("harvest", "translate", "bucket", "cache", "train", "evaluate", "register")


class PipelineResult(BaseModel):
    """What a `pea` flow run made: the training run, its evaluation report and its version in the registry."""

    model_config = ConfigDict(frozen=True)

    lang: str
    preset: str
    run_name: str
    report: str  # URI of the evaluation report page
    registration: Registration


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Log the start and the end of one of the STAGES."""
    log, at = get_run_logger(), (STAGES.index(name) + 1, len(STAGES), name)
    log.info("stage %d/%d %s", *at, extra={STAGE: at})
    yield
    log.info("stage %d/%d %s done", *at, extra={STAGE_DONE: at})


@flow(name="pea-harvest")
def harvest(profile: Profile, language: Language, sources: list[SourceSpec]) -> list[dict]:
    """Every source's harvest (already harvested ones return their manifest at once)."""
    if not sources:
        return [{"source": name} for name in harvested_sources(profile, language)]
    progress, manifests = reporter(), []
    for done, source in enumerate(sources, 1):
        manifests.append(harvest_source(profile, language, source))
        progress(f"harvested {source.name}", done / len(sources))
    return manifests


@flow(name="pea-evaluate")
def evaluate(profile: Profile, language: Language, preset: Preset, run_name: str, cfg: EvalConfig,
             gate: GateConfig) -> tuple[EvalSummary, Registration]:
    """The candidate against its baselines and the champion, then registration and the gate."""
    with stage("evaluate"):
        summary = evaluate_adapter(profile, language, preset, run_name, cfg)
    with stage("register"):
        registration = register_adapter(profile, language, preset, run_name, gate, summary)
    return summary, registration


def run_name_for(lang: str, preset: str, train: TrainConfig) -> str:
    """One training job per flow run: a retry of the flow run keeps it, a new flow run gets a new one."""
    run_id = flow_run.get_id()
    return train.job_name(lang, preset, run_id[:8] if run_id else None)


@flow(name="pea")
def pea(lang: Lang, config: RunConfig = RunConfig(), profile: str = "local") -> PipelineResult:
    """Harvest, translate, bucket, cache, train, evaluate and register the adapter for `lang` (a student UNet:
    flows/compress_flow.py).

    `profile` is a built-in profile or a YAML path (where the run happens); PEA_* variables of the worker
    override its fields. `config` is what the run does."""
    if config.train.method == COMPRESS:  # a student UNet has no adapter to evaluate and register here
        raise PeaError("the language pipeline trains adapters; method compress distils a student UNet",
                       f"run the compress deployment (flows/compress_flow.py), or `pea compress --recipe "
                       f"{config.train.recipe} --lang {lang}` on the harvested data")
    prof = _profile(profile)
    language, preset = get_language(str(lang)), get_preset(config.preset)
    check_mlflow(prof.mlflow_tracking_uri)
    features = data_stages(prof, language, preset, config)
    train_cfg = config.train.model_copy(update={"run_name": run_name_for(language.code, preset.name, config.train)})
    return train_and_register(prof, language, preset, config, train_cfg, features)


def data_stages(prof: Profile, language: Language, preset: Preset, config: RunConfig) -> dict:
    """Harvest, translate, bucket and cache (each a cached task): the features manifest training reads."""
    sources = config.data.sources
    with stage("harvest"):
        harvested = harvest(prof, language, list(sources) if sources is not None else
                            default_sources(prof, language, preset, config.data.toy_samples))
    with stage("translate"):
        captions = translate_captions(prof, language, preset, harvested)
    with stage("bucket"):
        shards = bucket_shards(prof, language, preset, captions)
    with stage("cache"):
        return cache_features(prof, language, preset, config.data.cache_batch, config.data.cache_text, shards)


def train_and_register(prof: Profile, language: Language, preset: Preset, config: RunConfig, train_cfg: TrainConfig,
                       features: dict) -> PipelineResult:
    """The training job `train_cfg` names on `features`, then its evaluation and registration."""
    with stage("train"):
        trained = train_adapter(prof, language, preset, train_cfg, features, TrainSwitches(progress="log"))
    summary, registration = evaluate(prof, language, preset, trained.run_name, config.eval, config.gate)
    return PipelineResult(lang=language.code, preset=preset.name, run_name=trained.run_name, report=summary.report,
                          registration=registration)


def _profile(name: str) -> Profile:
    """The flow is the entry point on a worker: the one place that reads the environment."""
    return load_profile(name, env=dict(os.environ), cwd=Path.cwd())


if __name__ == "__main__":
    pea(lang=Lang.ko)
