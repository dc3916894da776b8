"""The evaluate and register stages of a compression run (`pea compress`): its student UNet against the teacher
it was distilled from, and its version of `pea-unet-<recipe>` behind the same champion gate as the adapters.

evaluate: the base pipeline draws the English MG prompts three ways, with the same seeds: with the candidate
student in place of its UNet, with the registered champion student (when there is one), and as it is (the
teacher, `teacher_en`); the English metrics score them (pea.evaluate.suites.build_english_suite). The report
and metrics.json go where an adapter's do (eval_dir of the run), and the numbers into the run's MLflow run.
register: the student becomes a version of pea-unet-<recipe> (idempotent), `challenger` moves to it, and the
gate decides from the evaluation whether `champion` does too.

`pea evaluate` / `pea register` and the `compress` flow reach these through pea.evaluate.stage, which hands a
compression run (MLflow param train.method = compress) over here.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

from pea import names
from pea.errors import PeaError
from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.stage import (EvalSummary, Registration, champion_of, evaluated, gated, publish, registry_tags,
                               scoring_pipeline)
from pea.languages import Language
from pea.layout import STUDENTS
from pea.locks import stage_lock
from pea.presets import Preset
from pea.profiles import Profile
from pea.progress import Progress, quiet
from pea.tracking import TRAIN_RUN_TAG

ORDER = ["candidate", "champion", "teacher_en"]  # the table's rows


def _recipe(run, preset: Preset) -> str:
    """The run's recipe, after checking that `preset` is the teacher it was distilled from."""
    trained_on = run.data.tags.get("pea.preset")
    if trained_on != preset.name:
        raise PeaError(f"compression run {run.data.tags[TRAIN_RUN_TAG]!r} distilled preset {trained_on!r}'s UNet, not "
                       f"{preset.name!r}'s", f"evaluate it with --preset {trained_on}")
    return run.data.params["train.recipe"]


def with_unet(pipe, unet) -> Callable:
    """A draw function: `pipe` with `unet` in place of its own for the call (the other components shared)."""
    def draw(texts: list[str], **kwargs):
        teacher, pipe.unet = pipe.unet, unet
        try:
            return pipe(prompt=texts, **kwargs)
        finally:
            pipe.unet = teacher

    return draw


def _ratios(metrics: dict[str, dict[str, float]]) -> list[str]:
    """The notes that say what the student keeps of the teacher, metric by metric."""
    student, teacher = metrics["candidate"], metrics["teacher_en"]
    return [f"the student keeps {student[k] / teacher[k]:.3f} x the teacher's {k} ({student[k]:.4f} / {teacher[k]:.4f})"
            for k in student if k in teacher and teacher[k] > 0]


def evaluate_student(profile: Profile, language: Language, preset: Preset, run, cfg: EvalConfig = EvalConfig(),
                     progress: Progress = quiet) -> EvalSummary:
    """Compression run `run` (an MLflow run, method compress): its student, the champion student and the teacher
    on the English MG prompts; the report and metrics.json of the run."""
    from pea.compress.student import copy_student, frozen_like, load_student
    from pea.registry import download_student
    from pea.evaluate.prompts import english
    from pea.evaluate.run import EvalResult, System, score
    from pea.evaluate.suites import build_english_suite
    from pea.models.precision import default_device

    recipe, run_name = _recipe(run, preset), run.data.tags[TRAIN_RUN_TAG]
    cfg, model = cfg.for_preset(preset), names.compress_model_name(recipe)
    with stage_lock(profile.storage(), language.code, f"evaluate-{run_name}", progress=progress), \
            tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        candidate = load_student(copy_student(profile.storage(), language.code, run_name, tmp / "candidate"))
        champion_version, champion_dir, problem = champion_of(profile, model, tmp / "champion", download_student)
        pipe = scoring_pipeline(preset, profile.model_cache, default_device())
        pipe.set_progress_bar_config(disable=True)
        systems = {"candidate": System(with_unet(pipe, frozen_like(candidate, pipe.unet)), english)}
        if champion_dir is not None:
            systems["champion"] = System(with_unet(pipe, frozen_like(load_student(champion_dir), pipe.unet)), english)
        systems["teacher_en"] = System(lambda texts, **kw: pipe(prompt=texts, **kw), english)
        suite = build_english_suite(preset, language, profile.model_cache).limit(cfg.max_prompts)
        progress(f"evaluating student {run_name} on {', '.join(f'{len(v)} {k.upper()}' for k, v in suite.sets.items())}"
                 " English prompts" + (f" against champion v{champion_version}" if champion_dir else ""))
        metrics = score(systems, suite, cfg, tmp / "images", str(pipe.device), progress)
        notes = [f"champion v{champion_version} could not be evaluated: {problem}"] if problem else []
        result = EvalResult(metrics=metrics, prompts=dict(suite.sets), images=tmp / "images", primary=suite.primary,
                            guard=suite.guard, notes=notes + _ratios(metrics), order=ORDER)
        return publish(profile, language, run, preset, cfg, result, f"{model}: {run_name} ({preset.name})",
                       champion_version if champion_dir else None, problem, tmp)


def register_student_stage(profile: Profile, language: Language, preset: Preset, run,
                           gate: GateConfig = GateConfig()) -> Registration:
    """Compression run `run`'s student as a version of pea-unet-<recipe> and the gate's decision on it, under the
    recipe's register lock: the model belongs to no language, so two languages' runs share it."""
    from pea.registry import register_student

    recipe, run_name = _recipe(run, preset), run.data.tags[TRAIN_RUN_TAG]
    with stage_lock(profile.storage(), STUDENTS, f"register-{recipe}"):
        summary = evaluated(profile, language, run_name)
        tags = {k: run.data.tags.get(k, "unknown") for k in ("pea.data_digest", "pea.code_revision")}
        tags |= {"pea.recipe": recipe, "pea.data_lang": language.code} | registry_tags(preset, run_name, summary)
        registered = register_student(profile.mlflow_tracking_uri, recipe, run.info.run_id, tags)
        return gated(profile, names.compress_model_name(recipe), registered, summary, gate)
