"""Training as a Prefect task: Ray Train does the work and its own retries (max_failures); the task is cached
on the run name, config and feature manifest, so a finished job is not submitted twice."""

from dataclasses import asdict

from prefect import task
from prefect.artifacts import create_markdown_artifact

from pea.languages import Language
from pea.profiles import Profile
from pea.train.config import TrainConfig
from pea.train.run import train_adapter as train
from tasks.data import CACHE


@task(name="train", **CACHE)
def train_adapter(profile: Profile, language: Language, cfg: TrainConfig, features: dict) -> dict:
    result = train(profile, language, cfg)
    create_markdown_artifact(
        key=f"pea-{language.code}-training", description="the training job",
        markdown=f"**{result.run_name}**: {result.steps} steps, adapter at `{result.adapter_uri}`, "
                 f"MLflow run `{result.mlflow_run_id}`")
    return asdict(result)
