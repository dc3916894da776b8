"""Evaluation and registration as Prefect tasks, with a progress artifact while images are scored and a
table artifact of the numbers and the gate's decision. Registering touches the MLflow server, so it retries;
it is idempotent per training run, so a retry never makes a second version. A compression run's student goes
through the same two tasks (pea.evaluate.stage hands it to pea.compress.stage)."""

from prefect import task
from prefect.artifacts import create_markdown_artifact

from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.stage import EvalSummary, Registration, evaluate_stage, register_stage
from pea.languages import Language
from pea.layout import eval_dir
from pea.presets import Preset
from pea.profiles import Profile
from tasks.data import CACHE, cached_while_output_exists
from tasks.progress import reporter


@cached_while_output_exists(lambda language, run_name, **_: eval_dir(language.code, run_name, "metrics.json"))
@task(name="evaluate", **CACHE)
def evaluate_adapter(profile: Profile, language: Language, preset: Preset, run_name: str,
                     cfg: EvalConfig) -> EvalSummary:
    progress = reporter(f"evaluating {run_name}")
    summary = evaluate_stage(profile, language, preset, run_name, cfg, progress)
    progress(f"report at {summary.report}", 1.0)
    return summary


@task(name="register", retries=3, retry_delay_seconds=[5, 30, 120])
def register_adapter(profile: Profile, language: Language, preset: Preset, run_name: str, gate: GateConfig,
                     summary: EvalSummary) -> Registration:
    outcome = register_stage(profile, language, preset, run_name, gate)
    create_markdown_artifact(key=f"{outcome.model}-evaluation", markdown=markdown(summary, outcome),
                             description=f"{outcome.model} v{outcome.version}: evaluation and gate")
    return outcome


def markdown(summary: EvalSummary, outcome: Registration) -> str:
    names = sorted({k for m in summary.metrics.values() for k in m})
    lines = [f"| system | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {system} | " + " | ".join(f"{m[n]:.4f}" if n in m else "-" for n in names) + " |"
              for system, m in summary.metrics.items()]
    verdict = "promoted to **champion**" if outcome.promoted else "kept as **challenger**"
    return (f"## {outcome.model} version {outcome.version}: {verdict}\n\n{outcome.reason}\n\n"
            f"Gate: `{outcome.primary}` must rise, `{outcome.guard}` may not fall beyond the tolerance.\n\n"
            + "\n".join(lines) + f"\n\nReport: `{summary.report}`\n")
