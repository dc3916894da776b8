"""A task's progress: each line goes to the run's log with its fraction attached (the Prefect UI shows the
line, the CLI's stage line reads the fraction from the record), and, given a description, the fraction
also drives a progress artifact."""

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pea.progress import FRACTION, Progress


def reporter(artifact: str | None = None) -> Progress:
    log = get_run_logger()
    artifact_id = create_progress_artifact(0.0, description=artifact) if artifact else None

    def report(message: str, fraction: float | None = None) -> None:
        log.info(message, extra={FRACTION: fraction})
        if artifact_id and fraction is not None:
            update_progress_artifact(artifact_id, 100.0 * fraction)

    return report
