"""Training as a Prefect task: Ray Train does the work and its own retries (max_failures); the task is cached
on the run name, config and feature manifest, so a finished job is not submitted twice. On a profile with a Ray
Jobs API the job runs on the cluster without the task: a worker that restarts, or a flow run that is cancelled,
leaves it training, and a retry of the flow run (same run name) attaches to it (pea.train.jobs); its log goes
to the task's log. While the job runs, its progress (a log line and a progress artifact) follows the `step`
metric that rank 0 logs to MLflow."""

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pea.adapter import WEIGHTS
from pea.compress.student import STUDENT_FILES
from pea.languages import Language
from pea.layout import adapter_dir
from pea.presets import Preset
from pea.profiles import Profile
from pea.progress import Progress
from pea.tracking import find_train_run
from pea.train.config import COMPRESS, TrainConfig, TrainSwitches
from pea.train.run import TrainResult
from pea.train.run import train_adapter as train
from tasks.data import CACHE, cached_while_output_exists
from tasks.progress import reporter

POLL_S = 10
log = logging.getLogger("pea.tasks")


@contextmanager
def training_progress(profile: Profile, lang: str, run_name: str, steps: int, progress: Progress) -> Iterator[None]:
    """Poll the run's step in MLflow beside the blocking Ray job (the thread carries the task's Prefect context)."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            try:
                run = find_train_run(profile.mlflow_tracking_uri, lang, run_name)
                step = run.data.metrics.get("step") if run else None
                if step:
                    progress(f"step {step:.0f}/{steps}", min(1.0, step / steps))
            except Exception as e:  # noqa: BLE001 -- progress is best effort; the job reports its own failures
                log.debug("training progress not updated: %s", e)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(poll,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _adapter(language: Language, preset: Preset, cfg: TrainConfig, **_) -> tuple[str, ...]:
    """The file the job writes last: the final adapter's weights (a compression job's: its student's)."""
    last = STUDENT_FILES[1].split("/") if cfg.method == COMPRESS else [WEIGHTS]
    return adapter_dir(language.code, cfg.job_name(language.code, preset.name), *last)


@cached_while_output_exists(_adapter)
@task(name="train", **(CACHE | {"cache_policy": CACHE["cache_policy"] - "switches"}))
def train_adapter(profile: Profile, language: Language, preset: Preset, cfg: TrainConfig, features: dict,
                  switches: TrainSwitches = TrainSwitches()) -> TrainResult:
    """`switches` (progress display, test hooks) are left out of the cache key: they do not change the result."""
    run_name = cfg.job_name(language.code, preset.name)
    progress = reporter(f"training {run_name}")
    with training_progress(profile, language.code, run_name, cfg.steps, progress):
        result = train(profile, language, preset, cfg, switches, job_log=get_run_logger().info)
    progress(f"step {result.steps}/{cfg.steps}", 1.0)
    create_markdown_artifact(
        key=f"{cfg.model_name(language.code)}-training", description="the training job",
        markdown=f"**{result.run_name}**: {result.steps} steps, adapter at `{result.adapter_uri}`, "
                 f"MLflow run `{result.mlflow_run_id}`")
    return result
