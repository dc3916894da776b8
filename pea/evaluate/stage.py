"""The evaluate and register stages as a user or a flow runs them: a profile, a language, a training run.

evaluate: the candidate (the training run's final adapter), its baselines and the current champion on the
MG/MC sets; the numbers, the report and its images go to <root>/<lang>/eval/<run name>/ and to the training
run in MLflow. register: that run's adapter becomes a version of pea-<lang> (idempotent), `challenger`
moves to it, and the gate decides from the evaluation's numbers whether `champion` does too.
"""

import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pea import names, tracking
from pea.errors import PeaError
from pea.evaluate.config import EvalConfig, GateConfig
from pea.evaluate.prompts import EvalPrompt
from pea.languages import Language
from pea.layout import adapter_dir, eval_dir
from pea.locks import stage_lock
from pea.presets import Preset
from pea.profiles import Profile
from pea.progress import Progress, quiet
from pea.train.config import COMPRESS

REPORT_FILES = ("index.html", "grid.png", "curves.png")
# an adapter distilled against a student is scored beside the language's champion distilled against the teacher,
# both on the student (#18 item 4)
TEACHER_TRAINED = "teacher_trained"


class EvalSummary(BaseModel):
    """What an evaluation found: its metrics.json (the file keeps this layout) and where its report page is."""

    model_config = ConfigDict(frozen=True)

    run_name: str
    train_run_id: str
    preset: str
    metrics: dict[str, dict[str, float]]  # system -> "<set>_<metric>" -> mean score
    primary: str  # the metric the gate wants raised
    guard: str  # the metric it may not see fall
    notes: list[str]
    prompts: dict[str, list[EvalPrompt]]
    champion_version: str | None  # the champion scored beside the candidate
    champion_problem: str | None  # why the champion could not be scored
    config: EvalConfig
    skipped: dict[str, str] = {}  # system of config.systems -> why it was not scored
    table: dict = {}  # every system in the paper's layout (pea.evaluate.table.build_table)
    report: str  # URI of the report page


class Registration(BaseModel):
    """What registering a run did: its version of pea-<lang> and the gate's decision."""

    model_config = ConfigDict(frozen=True)

    model: str
    version: str
    new_version: bool  # False: this run was registered before (a retry)
    promoted: bool
    reason: str
    champion_version: str | None  # where the champion alias points now
    primary: str
    guard: str
    candidate: dict[str, float]
    champion: dict[str, float] | None  # the champion's scores in the evaluation


def _train_run(profile: Profile, language: Language, run_name: str):
    from pea.tracking import find_train_run

    run = find_train_run(profile.mlflow_tracking_uri, language.code, run_name)
    if run is None:
        raise PeaError(f"no training run {run_name!r} for {language.code!r} in {profile.mlflow_tracking_uri}",
                       f"train it first (`pea train --lang {language.code}`), or give the --run-name of one")
    return run


def _method(run) -> str:
    return run.data.params.get("train.method", "pea")


def _lineage(profile: Profile, language: Language, run) -> tuple[str, str | None, str | None]:
    """(method, encoder variant, student recipe) of an MLflow training run (pea.train.config.TrainConfig.method,
    .encoder_variant, and the recipe of the compression run .unet_from names, logged as params): together they
    name the registered model (pea.names.model_name)."""
    unet_from = run.data.params.get("train.unet_from")
    return _method(run), run.data.params.get("train.encoder_variant"), \
        _student_recipe(profile, language, unet_from) if unet_from else None


def _student_recipe(profile: Profile, language: Language, run_name: str) -> str:
    from pea.tracking import find_train_run

    student = find_train_run(profile.mlflow_tracking_uri, language.code, run_name)
    if student is None or "train.recipe" not in student.data.params:
        raise PeaError(f"the adapter was distilled against compression run {run_name!r}, which {language.code!r} "
                       f"has no MLflow run of in {profile.mlflow_tracking_uri}", "use the profile it was trained with")
    return student.data.params["train.recipe"]


def _on_student(profile: Profile, language: Language, pipe, run, lineage, dst: Path) -> tuple[Path | None, str | None]:
    """For an adapter distilled against a student (train.unet_from): the student UNet goes into `pipe`, so every
    system draws with it, and the language's champion adapter distilled against the teacher (pea-<lang>) is
    returned to be scored on the student beside it (or why it cannot be)."""
    from pea.compress.student import frozen_like, read_student

    if lineage[2] is None:
        return None, None
    pipe.unet = frozen_like(read_student(profile.storage(), language.code, run.data.params["train.unet_from"]), pipe.unet)
    _, folder, problem = champion_of(profile, names.model_name(language.code, *lineage[:2]), dst)
    if folder is None:
        return None, problem or f"{names.model_name(language.code, *lineage[:2])} has no champion to plug into the student"
    return folder, None


def _adapter_copy(profile: Profile, language: Language, run_name: str, dst: Path) -> Path:
    """The run's final adapter as a local folder (copied down from S3 when the root is remote), with a
    baseline's UNet part (pea.baselines.PART_FILES) when the run trained one."""
    from pea.baselines import PART_FILES

    storage = profile.storage()
    parts = adapter_dir(language.code, run_name)
    if not storage.exists(*parts, "adapter.json"):
        raise PeaError(f"training run {run_name!r} has no final adapter under {storage.uri(*parts)}",
                       "let the training job finish (the same run name continues it)")
    dst.mkdir(parents=True, exist_ok=True)
    parts_saved = [name for name in PART_FILES if storage.exists(*parts, name)]
    for name in ("adapter.json", "adapter.safetensors", *parts_saved):
        (dst / name).write_bytes(storage.read_bytes(*parts, name))
    return dst


def champion_of(profile: Profile, model: str, dst: Path, download=None) -> tuple[str | None, Path | None, str | None]:
    """(version, folder, problem): registered model `model`'s champion to compare against, if there is one,
    downloaded under `dst` by `download` (pea.registry.download_adapter, or download_student for a student UNet)."""
    from pea.registry import CHAMPION, aliased, download_adapter

    version = aliased(profile.mlflow_tracking_uri, model, CHAMPION)
    if version is None:
        return None, None, None
    try:
        folder = (download or download_adapter)(profile.mlflow_tracking_uri, model, version.version, dst)
    except PeaError as e:
        return str(version.version), None, e.problem
    return str(version.version), folder, None


def _history(profile: Profile, run_id: str) -> dict[str, list[tuple[int, float]]]:

    client = tracking.client(profile.mlflow_tracking_uri)
    keys = client.get_run(run_id).data.metrics
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys
            if not k.startswith("eval.")}


def scoring_pipeline(preset: Preset, model_cache: Path, device: str):
    """The frozen base pipeline every system draws its scored images with. The hub's SD1.5 ships a safety
    checker that swaps any image it flags for a black one, which would then be scored as the system's
    output: evaluation loads the pipeline without it."""
    from pea.models.loading import freeze, load_pipeline

    no_checker = {"safety_checker": None, "requires_safety_checker": False} if preset.family == "sd15" else {}
    return freeze(load_pipeline(preset, model_cache, **no_checker)).to(device)


def evaluate_stage(profile: Profile, language: Language, preset: Preset, run_name: str | None = None,
                   cfg: EvalConfig = EvalConfig(), progress: Progress = quiet) -> EvalSummary:
    """The candidate adapter against its champion and baselines (a compression run's student against its teacher:
    pea.compress.stage); the report under eval_dir and in the run's MLflow run."""
    from pea.evaluate.run import evaluate
    from pea.evaluate.suites import build_suite
    from pea.evaluate.systems import load_external
    from pea.inference import PEAPipeline, check_fits
    from pea.models.precision import default_device

    run_name = names.check_name(run_name or names.run_name(language.code, preset.name), "run name")
    run = _train_run(profile, language, run_name)
    if _method(run) == COMPRESS:
        from pea.compress.stage import evaluate_student

        return evaluate_student(profile, language, preset, run, cfg, progress)
    storage = profile.storage()
    cfg = cfg.for_preset(preset)
    lock = stage_lock(storage, language.code, f"evaluate-{run_name}", progress=progress)  # one evaluation of a run at a time
    with lock, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter, lineage = _adapter_copy(profile, language, run_name, tmp / "candidate"), _lineage(profile, language, run)
        champion_version, champion_dir, problem = champion_of(profile, names.model_name(language.code, *lineage),
                                                              tmp / "champion")
        notes = [f"champion v{champion_version} could not be evaluated: {problem}"] if problem else []
        for folder in filter(None, (adapter, champion_dir)):
            check_fits(folder, language, preset)  # before the base model loads
        device = default_device()
        pipe = scoring_pipeline(preset, profile.model_cache, device)
        teacher_trained, why_not = _on_student(profile, language, pipe, run, lineage, tmp / "teacher_trained")

        def wrap(folder: Path) -> PEAPipeline:
            return PEAPipeline.wrap(pipe, folder, language, preset, profile.model_cache)

        suite = build_suite(preset, language, profile.model_cache).limit(cfg.max_prompts)
        langs = {p.lang for prompts in suite.sets.values() for p in prompts}
        external, skipped = load_external(cfg.systems, langs, preset, profile.model_cache, device)
        others = {TEACHER_TRAINED: wrap(teacher_trained)} if teacher_trained else {}
        skipped |= {TEACHER_TRAINED: why_not} if why_not else {}
        progress(f"evaluating {run_name} on {', '.join(f'{len(v)} {k.upper()}' for k, v in suite.sets.items())} prompts"
                 + (f" against champion v{champion_version}" if champion_dir else ""))
        result = evaluate(pipe, wrap(adapter), wrap(champion_dir) if champion_dir else None, suite, cfg,
                          tmp / "images", progress, notes, external, skipped, others)
        title = f"{names.model_name(language.code, *lineage)}: {run_name} ({preset.name})"
        return publish(profile, language, run, preset, cfg, result, title, champion_version if champion_dir else None,
                       problem, tmp)


def publish(profile: Profile, language: Language, run, preset: Preset, cfg: EvalConfig, result, title: str,
            champion_version: str | None, problem: str | None, tmp: Path) -> EvalSummary:
    """An evaluation's report, images and metrics.json under eval_dir (metrics.json last: the stage's done-mark),
    and its numbers, skipped systems and report in the training run's MLflow run."""
    from mlflow.entities import Metric

    from pea.evaluate.report import write_report
    from pea.evaluate.table import SKIPPED_TAG

    storage, run_name = profile.storage(), run.data.tags[tracking.TRAIN_RUN_TAG]
    files = write_report(result, tmp / "report", title, _history(profile, run.info.run_id), cfg.report_prompts)
    summary = result.to_json() | {"run_name": run_name, "train_run_id": run.info.run_id, "preset": preset.name,
                                  "champion_version": str(champion_version) if champion_version else None,
                                  "champion_problem": problem, "config": cfg.model_dump(mode="json")}
    for path in files.values():
        storage.write_bytes(path.read_bytes(), *eval_dir(language.code, run_name), path.name)
    client = tracking.client(profile.mlflow_tracking_uri)
    client.log_batch(run.info.run_id, metrics=[Metric(f"eval.{system}.{k}", v, 0, 0)
                                               for system, m in result.metrics.items() for k, v in m.items()])
    for system, why in result.skipped.items():  # a skipped system's row in the run: its reason
        client.set_tag(run.info.run_id, SKIPPED_TAG + system, why)
    client.log_artifacts(run.info.run_id, str(tmp / "report"), artifact_path="report")
    storage.write_json(summary, *eval_dir(language.code, run_name), "metrics.json")
    return EvalSummary(**summary, report=storage.uri(*eval_dir(language.code, run_name), "index.html"))


def register_stage(profile: Profile, language: Language, preset: Preset, run_name: str | None = None,
                   gate: GateConfig = GateConfig()) -> Registration:
    """`_register` under the language's register lock (pea.locks): two runs' gates deciding at once would both
    compare against the same champion, and the last to move the alias would win. A compression run's student
    registers as pea-unet-<recipe> (pea.compress.stage)."""
    run_name = names.check_name(run_name or names.run_name(language.code, preset.name), "run name")
    run = _train_run(profile, language, run_name)
    if _method(run) == COMPRESS:
        from pea.compress.stage import register_student_stage

        return register_student_stage(profile, language, preset, run, gate)
    with stage_lock(profile.storage(), language.code, "register"):
        return _register(profile, language, preset, run, gate)


def evaluated(profile: Profile, language: Language, run_name: str) -> dict:
    """The run's metrics.json (pea.evaluate.stage.publish wrote it), or an error saying to evaluate it first."""
    storage = profile.storage()
    if not storage.exists(*eval_dir(language.code, run_name), "metrics.json"):
        raise PeaError(f"training run {run_name!r} has not been evaluated",
                       f"run `pea evaluate --lang {language.code} --run-name {run_name}` first")
    return storage.read_json(*eval_dir(language.code, run_name), "metrics.json")


def _register(profile: Profile, language: Language, preset: Preset, run, gate: GateConfig) -> Registration:
    from pea.registry import register

    run_name = run.data.tags[tracking.TRAIN_RUN_TAG]
    summary = evaluated(profile, language, run_name)
    lineage = _lineage(profile, language, run)
    tags = {k: run.data.tags.get(k, "unknown") for k in ("pea.data_digest", "pea.code_revision", "pea.student_encoder")}
    tags |= {"pea.encoder_variant": lineage[1]} if lineage[1] else {}
    tags |= {"pea.unet_recipe": lineage[2], "pea.unet_from": run.data.params["train.unet_from"]} if lineage[2] else {}
    tags |= {"pea.lang": language.code} | registry_tags(preset, run_name, summary)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = _adapter_copy(profile, language, run_name, Path(tmp) / "adapter")
        registered = register(profile.mlflow_tracking_uri, language.code, run.info.run_id, adapter, tags,
                              {"lang": language.code, "preset": preset.name, "model_cache": str(profile.model_cache)},
                              *lineage)
        shutil.rmtree(adapter)
    return gated(profile, names.model_name(language.code, *lineage), registered, summary, gate)


def registry_tags(preset: Preset, run_name: str, summary: dict) -> dict[str, str]:
    """What every registered version records of its base model, run and evaluation."""
    candidate, primary, guard = summary["metrics"]["candidate"], summary["primary"], summary["guard"]
    return {"pea.preset": preset.name, "pea.base_model": preset.model_id or preset.name, "pea.train_run": run_name,
            "pea.primary": primary, "pea.primary_value": f"{candidate[primary]:.6g}",
            "pea.guard": guard, "pea.guard_value": f"{candidate[guard]:.6g}",
            **{f"pea.metric.{k}": f"{v:.6g}" for k, v in candidate.items()}}


def gated(profile: Profile, model: str, registered, summary: dict, gate: GateConfig) -> Registration:
    """The champion gate on a newly registered version of `model`, from its evaluation's numbers (`summary`, its
    metrics.json): the decision as the version's tags, `champion` moved to it when it wins."""
    from pea.gate import Decision, decide
    from pea.registry import CHAMPION, aliased, apply_decision

    candidate, primary, guard = summary["metrics"]["candidate"], summary["primary"], summary["guard"]
    champion = aliased(profile.mlflow_tracking_uri, model, CHAMPION)
    if champion is not None and str(champion.version) == registered.version:
        decision = Decision(False, "this version is the champion already", {})
    else:
        compared = summary.get("champion_version")
        problem = summary.get("champion_problem")
        if champion is not None and not problem and compared != str(champion.version):
            problem = f"the champion is v{champion.version} but this evaluation compared against {compared or 'none'}"
        decision = decide(candidate, summary["metrics"].get("champion") if champion else None, primary, guard, gate,
                          problem if champion is not None else None)
        apply_decision(profile.mlflow_tracking_uri, model, registered.version, decision.promote, decision.tags())
    champion_version = registered.version if decision.promote else str(champion.version) if champion else None
    return Registration(model=model, version=registered.version, new_version=registered.created,
                        promoted=decision.promote, reason=decision.reason, champion_version=champion_version,
                        primary=primary, guard=guard, candidate=candidate, champion=summary["metrics"].get("champion"))
