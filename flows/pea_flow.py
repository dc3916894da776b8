"""The `pea` flow: one language, every stage, unattended. Deployment `train-language` in prefect.yaml.

    prefect deployment run pea/train-language --param lang=ko
    uv run pea train-language --lang ko          # the same flow in-process (Prefect's temporary local API)

Parameters are checked against the registries before any work starts (an unknown language or preset, or a
step count below 1, is refused with the valid values). Each training job gets its own run name (from the flow
run), so a scheduled re-run trains a new candidate on the cached data; retrying a failed flow run keeps the
name and resumes from the stage that failed (finished stages are cached, Ray Train resumes its checkpoint).
"""

import os
from enum import StrEnum
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from pydantic import PositiveInt

from pea.data.sources import SourceSpec
from pea.evaluate.config import EvalConfig, GateConfig
from pea.languages import Language, get_language
from pea.languages import registry as languages
from pea.presets import registry as presets
from pea.profiles import Profile, check_mlflow, load_profile
from pea.stages import default_sources, harvested_sources
from pea.train.config import TrainConfig
from tasks.data import bucket_shards, cache_features, harvest_source, translate_captions
from tasks.evaluation import evaluate_adapter, register_adapter
from tasks.training import train_adapter

Lang = StrEnum("Lang", {code: code for code in languages()})
PresetName = StrEnum("PresetName", {name: name for name in presets()})


@flow(name="pea-harvest")
def harvest(profile: Profile, language: Language, sources: list[SourceSpec]) -> list[dict]:
    """Every source's harvest (already harvested ones return their manifest at once)."""
    if not sources:
        return [{"source": name} for name in harvested_sources(profile, language)]
    return [harvest_source(profile, language, source) for source in sources]


@flow(name="pea-evaluate")
def evaluate(profile: Profile, language: Language, run_name: str, cfg: EvalConfig, gate: GateConfig) -> dict:
    """The candidate against its baselines and the champion, then registration and the gate."""
    summary = evaluate_adapter(profile, language, run_name, cfg)
    return register_adapter(profile, language, run_name, gate, summary)


def run_name_for(lang: str, preset: str) -> str:
    """One training job per flow run: a retry of the flow run keeps it, a new flow run gets a new one."""
    run_id = flow_run.get_id()
    return f"pea-{lang}-{preset}-{run_id[:8]}" if run_id else f"pea-{lang}-{preset}"


@flow(name="pea")
def pea(lang: Lang, preset: PresetName | None = None, steps: PositiveInt | None = None, profile: str = "local",
        sources: list[SourceSpec] | None = None, eval_prompts: PositiveInt | None = None,
        eval_steps: PositiveInt = 25, tolerance: float = 0.05, toy_samples: PositiveInt = 4000) -> dict:
    """Harvest, translate, bucket, cache, train, evaluate and register the adapter for `lang`.

    `profile` is a built-in profile or a YAML path; PEA_* variables of the worker override its fields."""
    prof = _profile(profile, preset)
    language = get_language(str(lang))
    check_mlflow(prof.mlflow_tracking_uri)
    harvested = harvest(prof, language, sources if sources is not None else default_sources(prof, language, toy_samples))
    captions = translate_captions(prof, language, harvested)
    shards = bucket_shards(prof, language, captions)
    features = cache_features(prof, language, shards)
    train_cfg = TrainConfig(progress="log", run_name=run_name_for(language.code, prof.preset), **(
        {"steps": steps} if steps else {}))
    result = train_adapter(prof, language, train_cfg, features)
    outcome = evaluate(prof, language, result["run_name"], EvalConfig(max_prompts=eval_prompts, steps=eval_steps),
                       GateConfig(tolerance=tolerance))
    return {"lang": language.code, "preset": prof.preset, "run_name": result["run_name"], **outcome}


def _profile(name: str, preset: PresetName | None) -> Profile:
    """The flow is the entry point on a worker: the one place that reads the environment."""
    env = dict(os.environ)
    if preset:
        env["PEA_PRESET"] = str(preset)
    return load_profile(name, env=env, cwd=Path.cwd())


if __name__ == "__main__":
    pea(lang=Lang.ko)
