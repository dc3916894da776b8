"""Evaluation and registration as Prefect tasks, with a progress artifact while images are scored and a
table artifact of the numbers and the gate's decision. Registering touches the MLflow server, so it retries;
it is idempotent per training run, so a retry never makes a second version."""

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.stage import evaluate_stage, register_stage
from pea.languages import Language
from pea.names import model_name
from pea.presets import Preset
from pea.profiles import Profile
from tasks.data import CACHE


@task(name="evaluate", **CACHE)
def evaluate_adapter(profile: Profile, language: Language, preset: Preset, run_name: str, cfg: EvalConfig) -> dict:
    log = get_run_logger()
    artifact = create_progress_artifact(0.0, description=f"evaluating {run_name}")

    def progress(message: str, fraction: float | None = None) -> None:
        log.info(message)
        if fraction is not None:
            update_progress_artifact(artifact, 100.0 * fraction)

    summary = evaluate_stage(profile, language, preset, run_name, cfg, progress)
    update_progress_artifact(artifact, 100.0)
    return summary


@task(name="register", retries=3, retry_delay_seconds=[5, 30, 120])
def register_adapter(profile: Profile, language: Language, preset: Preset, run_name: str, gate: GateConfig,
                     summary: dict) -> dict:
    outcome = register_stage(profile, language, preset, run_name, gate)
    create_markdown_artifact(key=f"{model_name(language.code)}-evaluation", markdown=markdown(summary, outcome),
                             description=f"{outcome['model']} v{outcome['version']}: evaluation and gate")
    return outcome


def markdown(summary: dict, outcome: dict) -> str:
    metrics = summary["metrics"]
    names = sorted({k for m in metrics.values() for k in m})
    lines = [f"| system | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {system} | " + " | ".join(f"{m[n]:.4f}" if n in m else "-" for n in names) + " |"
              for system, m in metrics.items()]
    verdict = "promoted to **champion**" if outcome["promoted"] else "kept as **challenger**"
    return (f"## {outcome['model']} version {outcome['version']}: {verdict}\n\n{outcome['reason']}\n\n"
            f"Gate: `{outcome['primary']}` must rise, `{outcome['guard']}` may not fall beyond the tolerance.\n\n"
            + "\n".join(lines) + f"\n\nReport: `{summary['report']}`\n")
