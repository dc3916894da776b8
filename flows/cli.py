"""The `pea` command. Heavy imports (torch, diffusers, Ray, Prefect) happen inside the commands that need
them, so that `pea --help` and `pea languages` answer at once."""

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from pea.errors import PeaError, redact
from pea.progress import lines

app = typer.Typer(
    help="Teach English text-to-image diffusion models other languages with PEA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_state = {"debug": False}

ProfileOpt = Annotated[
    str,
    typer.Option(
        "--profile",
        envvar="PEA_PROFILE",
        help="Built-in profile (local, cluster) or path of a profile YAML. Fields can be overridden with "
        "PEA_<FIELD> variables, nested with __ (PEA_STORAGE_ROOT, PEA_RAY__NUM_WORKERS).",
    ),
]
LangOpt = Annotated[str, typer.Option("--lang", help="Language code (see `pea languages`).")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="Base-model preset (`pea presets`; default: the run config's).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Run config YAML (`pea config --show` prints one); flags override it.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False):
    _state["debug"] = debug
    # the libraries' own bars and hints would drown pea's output; --debug keeps them
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _profile(name: str, interactive: bool = False):
    """Where the run happens. The CLI is an entry point: the one place besides the flow that reads the environment.
    Every command that runs anything loads its profile first, before the libraries it runs are imported, so this is
    also where their environment defaults are set (_library_env), the same for every command but MLflow's HTTP
    retries, which are short for an `interactive` one."""
    from pea.profiles import load_profile

    prof = load_profile(name, env=dict(os.environ), cwd=Path.cwd())
    _library_env(local_ray=prof.ray.address is None, interactive=interactive)
    return prof


# MLflow's client retries a failed HTTP request for about 4 minutes (7 retries, backoff factor 2, 120 s timeout), to
# outlast a server's restart or rate limit. The interactive commands, which a user waits on for a lookup or a
# registration (generate, models, register, dashboard), give up sooner: each is quick to run again, and `register`
# is idempotent per run. train, evaluate and train-language (the flow) keep MLflow's policy: their last MLflow writes come after
# hours of work, which a blip of the server must not throw away, and a local Ray's workers (rank 0 logs the training
# metrics) inherit this process's environment. A server that is down fails every one of them at once anyway: each
# checks it before it starts (check_mlflow).
_MLFLOW_SHORT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int to MLflow: waits of 0 s then 2 s, each plus up to 1 s jitter
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds to connect or between two reads, not for a whole download
}


def _library_env(local_ray: bool, interactive: bool = False) -> None:
    """Defaults for the libraries a command may run in this process (Ray, MLflow, Prefect), set before they are
    imported (Ray reads its own at import time); a variable already set wins. An `interactive` command gets
    MLflow's HTTP retries short (_MLFLOW_SHORT_RETRIES)."""
    env = {
        # Ray workers run in this environment (on a cluster, in pea's image): Ray's `uv run` hook would package
        # the current directory and build a virtualenv in every worker, and fails outside the project directory
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        # a registered model's environment is pea's pinned requirements, not the uv project of the current directory
        "MLFLOW_UV_AUTO_DETECT": "false",
        # the temporary Prefect server's telemetry service: at start-up it writes to the server's SQLite database
        # while the other services do ("database is locked"), then sends a heartbeat every 10 minutes, offline too
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",  # and Prefect's client-side telemetry, with its first-run notice on a terminal
        # on a busy 2-core machine Prefect's temporary API server needs more than its default 20 s to start
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    if local_ray:
        env["RAY_AUTH_MODE"] = "token"  # a local cluster's default, said explicitly: Ray then does not warn about it
    if interactive:
        env |= _MLFLOW_SHORT_RETRIES
    for key, value in env.items():
        os.environ.setdefault(key, value)


def _run(config: Path | None, preset: str | None, **fields):
    """What the run does: the run config file (or the defaults) with the flags given, by dotted field name
    (`train__steps` for train.steps); flags left out keep the file's or the default value."""
    from pea.run_config import build_run_config

    overrides = {"preset": preset} | {k.replace("__", "."): v for k, v in fields.items()}
    return build_run_config(config, overrides)


def _preset(run):
    from pea.presets import get_preset

    return get_preset(run.preset)


@app.command()
def languages():
    """List the registered languages and the models each one uses."""
    from rich.console import Console
    from rich.table import Table

    from pea.languages import registry

    table = Table(title="pea languages", show_lines=True)
    for col in ("code", "language", "student encoder", "CLIPScore model", "translation", "buckets"):
        table.add_column(col, overflow="fold")
    for lang in registry().values():
        enc = lang.student_encoder
        encoder = f"{enc.id}\n{enc.loader}, {enc.max_tokens} tokens, layer {enc.hidden_layer}"
        if lang.paper_encoder:
            encoder += f"\n(paper's {lang.paper_encoder.id}: {lang.paper_encoder.why_not})"
        table.add_row(
            lang.code,
            f"{lang.name}\n{lang.native_name}",
            encoder,
            f"{lang.clipscore.id}\n{lang.clipscore.loader}",
            f"{lang.translation.id}\n{lang.translation.code}",
            "\n".join(f"{k}: {v}px" for k, v in lang.buckets.items()),
        )
    Console(width=150).print(table)


@app.command()
def presets():
    """List the base-model presets."""
    from rich.console import Console
    from rich.table import Table

    from pea.presets import registry

    table = Table(title="pea presets")
    for col in ("preset", "family", "model", "context", "pooled", "resolution"):
        table.add_column(col)
    for p in registry().values():
        model = p.model_id or f"built locally from pea/resources/configs/{p.build}"
        table.add_row(p.name, p.family, model, str(p.context_dim), str(p.pooled_dim or "-"), str(p.resolution))
    Console(width=160).print(table)


@app.command()
def profile(
    profile: ProfileOpt = "local",
    check: Annotated[bool, typer.Option("--check", help="Also check that MLflow is reachable.")] = False,
):
    """Show the active profile after environment overrides."""
    import yaml

    from pea.profiles import check_mlflow

    prof = _profile(profile)
    typer.echo(yaml.safe_dump(prof.model_dump(mode="json"), sort_keys=False).rstrip())  # passwords redacted
    if check:
        check_mlflow(prof.mlflow_tracking_uri)
        typer.echo(f"mlflow: {redact(prof.mlflow_tracking_uri)} reachable")


@app.command("train-language")
def train_language(
    lang: LangOpt,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the run config's).")] = None,
    method: Annotated[str | None, typer.Option(help="pea, or an ablation row: finetune, tkd, ulkd, ufkd, utkd, ukd.")] = None,
    eval_prompts: Annotated[int | None, typer.Option(min=1, help="Prompts per evaluation set (default: all).")] = None,
):
    """Run the whole per-language pipeline (the Prefect flow `pea`, in-process) on the active profile."""
    from pea.languages import get_language
    from pea.progress import stage_line

    get_language(lang)  # bad input fails here, before Prefect starts
    prof = _profile(profile)
    if not _state["debug"]:
        _quiet_pipeline_env()
    run = _run(config, preset, train__steps=steps, train__method=method, eval__max_prompts=eval_prompts)
    from flows.pea_flow import pea

    if not _state["debug"]:
        _hide_run_failures()
    with stage_line(sys.stderr):
        out = pea(lang=lang, config=run, profile=profile)
    reg = out.registration
    role = ("champion" if reg.champion_version == reg.version
            else f"challenger, version {reg.champion_version} stays champion")
    typer.echo(f"{reg.model} version {reg.version} ({out.run_name}) is {role}: {reg.reason}")
    typer.echo(f"report: {out.report}")
    typer.echo(f"MLflow UI: {_mlflow_ui(prof.mlflow_tracking_uri)}")


def _quiet_pipeline_env() -> None:
    """The stage line replaces the libraries' own lines and bars (--debug keeps them): defaults set before the
    libraries are imported (tqdm and Ray read theirs at import time); a variable already set wins."""
    env = {
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",  # INFO lines still reach the Prefect API
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TQDM_DISABLE": "1",  # diffusers' "Loading pipeline components" bar
        "RAY_LOGGER_LEVEL": "warning",
        "RAY_LOG_TO_DRIVER": "0",  # the workers' lines stay in /tmp/ray/session_latest/logs
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)


def _hide_run_failures() -> None:
    """A failing run is told once, as the CLI's `error:` line (or, for a bug, Python's traceback): Prefect's run
    loggers would print the same failure above it, with a traceback per flow it passed through. Their ERROR
    records are kept off the console only; they still reach the Prefect API, and --debug shows them."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_not_a_run_failure)


def _not_a_run_failure(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.name in ("prefect.flow_runs", "prefect.task_runs"))


def _mlflow_ui(tracking_uri: str) -> str:
    """A tracking server is its own UI (shown without its password); a local store is opened by one on
    loopback."""
    if tracking_uri.startswith(("http://", "https://")):
        return redact(tracking_uri)
    return f"uv run mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --host 127.0.0.1"


@app.command("config")
def show_config(
    show: Annotated[bool, typer.Option("--show", help="Print the run config (the default; --show reads well in scripts).")] = True,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Print the run config that `pea train-language` would use, every field with its value, as YAML: save it,
    edit it, and pass it back with --config (or set the same fields of a deployment's `config` parameter)."""
    if show:
        typer.echo(_run(config, preset).to_yaml().rstrip())


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt, in the adapter's language.")],
    lang: LangOpt,
    adapter: Annotated[str, typer.Option(help="Folder of a saved adapter (adapter.json + adapter.safetensors), or a "
                                         "registry URI: models:/pea-<lang>@champion, models:/pea-<lang>/<version>.")],
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("out.png"),
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps.")] = 30,
    guidance: Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance scale.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Generate an image from a native-language prompt with a trained adapter."""
    from pea.generate import generate_image
    from pea.profiles import check_mlflow
    from pea.registry import resolve_adapter

    base, prof = _preset(_run(config, preset)), _profile(profile, interactive=True)
    if adapter.startswith("models:/"):
        check_mlflow(prof.mlflow_tracking_uri)  # before the registry's client retries and the base model loads
    folder = resolve_adapter(adapter, prof.mlflow_tracking_uri, prof.data_dir / "registry")
    path = generate_image(prompt, lang, folder, out, prof, base, negative=negative, steps=steps, guidance=guidance,
                          seed=seed)
    typer.echo(f"wrote {path}")


@app.command()
def harvest(
    lang: LangOpt,
    source_kind: Annotated[str, typer.Option(help="laion-multi, wukong, laion-en, folder or webdataset.")],
    source_uri: Annotated[str, typer.Option(help="Metadata parquet, image folder (with <stem>.txt captions), or shard glob.")],
    source_name: Annotated[str | None, typer.Option(help="Name of the source's folder under raw/ (default: the kind).")] = None,
    culture: Annotated[bool, typer.Option(help="Every sample is culture data (SD loss only), as WuKong is.")] = False,
    min_side: Annotated[int, typer.Option(min=0, help="Drop samples whose published width or height is smaller.")] = 0,
    processes: Annotated[int, typer.Option(min=1, help="img2dataset download processes.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="img2dataset threads per process.")] = 16,
    distributor: Annotated[str, typer.Option(help="img2dataset engine: multiprocessing, ray or pyspark.")] = "multiprocessing",
    profile: ProfileOpt = "local",
):
    """Download or import image-text pairs into <root>/<lang>/raw/<source>/."""
    from pydantic import ValidationError

    from pea.data.harvest import HarvestConfig
    from pea.data.sources import SourceSpec
    from pea.languages import get_language
    from pea.stages import harvest_stage

    language = get_language(lang)
    try:
        source = SourceSpec(name=source_name or source_kind, kind=source_kind, uri=source_uri, culture=culture, min_side=min_side)
        cfg = HarvestConfig(processes=processes, threads=threads, distributor=distributor)
    except ValidationError as e:
        err = e.errors()[0]
        option = {"kind": "source-kind", "uri": "source-uri"}.get(str(err["loc"][0]), err["loc"][0])
        raise PeaError(f"--{str(option).replace('_', '-')}: {err['msg']}", "see `pea harvest --help`") from e
    manifest = harvest_stage(_profile(profile), language, source, cfg)
    typer.echo(f"harvested {source.name}: {manifest['counts']}")


@app.command()
def translate(lang: LangOpt, profile: ProfileOpt = "local", preset: PresetOpt = None, config: ConfigOpt = None):
    """Fill missing captions by machine translation; mark samples parallel or culture."""
    from pea.languages import get_language
    from pea.stages import translate_stage

    manifest = translate_stage(_profile(profile), get_language(lang), _preset(_run(config, preset)), progress=lines(typer.echo))
    typer.echo(f"captions: {manifest['counts']}, dropped: {manifest['dropped']} (this run: {manifest['this_run']})")


@app.command()
def bucket(
    lang: LangOpt,
    side: Annotated[int | None, typer.Option(help="Target bucket side (area ~ side^2); default from language and preset.")] = None,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Resize into aspect-ratio buckets and write per-bucket webdataset shards."""
    from pea.languages import get_language
    from pea.stages import bucket_config, bucket_stage

    prof, language, base = _profile(profile), get_language(lang), _preset(_run(config, preset))
    overrides = {"side": side} if side else {}
    manifest = bucket_stage(prof, language, base, bucket_config(language, base, **overrides), lines(typer.echo))
    typer.echo(f"buckets: {manifest['buckets']}, dropped: {manifest['dropped']}")


@app.command()
def cache(
    lang: LangOpt,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per encoder batch (on a GPU at most what "
                                                   "fits; default: the run config's).")] = None,
    text: Annotated[bool | None, typer.Option("--text/--no-text", help="Cache the text embeddings too (~6x the "
                                              "bytes; default: the run config's, off: training encodes them).")] = None,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Precompute every sample's VAE latent distribution (and, with --text, its text embeddings)."""
    from pea.languages import get_language
    from pea.stages import cache_stage

    run = _run(config, preset, data__cache_batch=batch_size, data__cache_text=text)
    manifest = cache_stage(_profile(profile), get_language(lang), _preset(run), run.data.cache_batch,
                           run.data.cache_text, lines(typer.echo))
    typer.echo(f"cached {manifest['index']['shards']} shards ({manifest['dtype']}, "
               f"{manifest['bytes_per_sample'] / 1000:.1f} KB a sample)")


@app.command()
def train(
    lang: LangOpt,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (default: the run config's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per worker per step.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (default: the preset's).")] = None,
    method: Annotated[str | None, typer.Option(help="pea, or an ablation row: finetune, tkd, ulkd, ufkd, utkd, ukd.")] = None,
    encoder_variant: Annotated[str | None, typer.Option(help="Train on one of the language's other encoders "
                                                        "(multilingual-clip, mt5) instead of its own.")] = None,
    unet_from: Annotated[str | None, typer.Option(help="Distil against a compression run's student UNet (the run "
                                                  "name `pea compress` printed) instead of the preset's.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Ray Train run name; the same name resumes that run.")] = None,
    override_config: Annotated[bool, typer.Option(help="Resume a run even though its config changed.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the run's Ray job instead (a profile with "
                                       "ray.jobs_address, whose jobs outlive this command); the same run name "
                                       "resumes it later.")] = False,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Train the language's adapter on existing shards (Ray Train; workers and GPUs from the profile). With a Ray
    Jobs API in the profile the training is a Ray job: Ctrl-C stops waiting for it, not the job, and the same
    command attaches to it again."""
    run = _run(config, preset, train__steps=steps, train__batch_size=batch_size, train__lr=lr, train__method=method,
               train__encoder_variant=encoder_variant, train__unet_from=unet_from, train__run_name=run_name)
    result = _train_job(run, lang, profile, stop, override_config)
    if result is not None:
        typer.echo(f"trained {result.run_name}: {result.steps} steps, adapter at {result.adapter_uri}, "
                   f"MLflow run {result.mlflow_run_id}")


def _train_job(run, lang: str, profile: str, stop: bool, override_config: bool):
    """Run (or, with `stop`, stop) the training job `run.train` describes; its TrainResult, None when stopping."""
    from pea.languages import get_language
    from pea.profiles import check_mlflow
    from pea.train.config import TrainSwitches
    from pea.train.run import train_adapter

    language, prof = get_language(lang), _profile(profile)
    if stop:
        from pea.train.jobs import stop_training

        name = run.train.job_name(language.code, run.preset)
        stopped = stop_training(prof, language.code, name)
        typer.echo(f"stopping training job {stopped}" if stopped else f"no training job of {name} is running")
        return None
    check_mlflow(prof.mlflow_tracking_uri)  # before the models are built and Ray starts
    switches = TrainSwitches(progress="bar" if sys.stderr.isatty() else "log")
    return train_adapter(prof, language, _preset(run), run.train, switches, override_config,
                         job_log=lambda line: typer.echo(line, err=True))


@app.command()
def compress(
    recipe: Annotated[str, typer.Option(help="The student's architecture: a recipe of pea/resources/compress.yaml "
                                        "(bk-sdm-base/small/tiny/midless for SD1.5; sdxl-small/tiny/midless, "
                                        "ssd-1b for SDXL).")],
    lang: Annotated[str, typer.Option("--lang", help="Whose data to distil on: its English captions (the "
                                      "teacher's conditioning) and images.")],
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (default: the run config's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per worker per step.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Peak learning rate (default: the preset's; BK-SDM "
                                             "used 5e-5).")] = None,
    run_name: Annotated[str | None, typer.Option(help="Ray Train run name (default: pea-unet-<recipe>-<preset>); "
                                                 "the same name resumes that run.")] = None,
    override_config: Annotated[bool, typer.Option(help="Resume a run even though its config changed.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the run's Ray job instead.")] = False,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Distil a block-removed student UNet from the preset's UNet (BK-SDM: SD loss + output KD + feature KD) with
    the training engine adapters use (Ray Train, checkpoints, resume); the student is saved as a diffusers UNet."""
    run = _run(config, preset, train__steps=steps, train__batch_size=batch_size, train__lr=lr,
               train__method="compress", train__recipe=recipe, train__run_name=run_name)
    result = _train_job(run, lang, profile, stop, override_config)
    if result is not None:
        typer.echo(f"distilled {result.run_name}: {result.steps} steps, student UNet at {result.adapter_uri}/unet "
                   f"(UNet2DConditionModel.from_pretrained loads it), MLflow run {result.mlflow_run_id}\n"
                   f"next: pea evaluate / pea register --lang {lang} --run-name {result.run_name} --preset {run.preset} "
                   f"(against its teacher; registers pea-unet-{recipe})")


@app.command()
def evaluate(
    lang: LangOpt,
    run_name: Annotated[str | None, typer.Option(help="The training run to evaluate (default: pea-<lang>-<preset>).")] = None,
    max_prompts: Annotated[int | None, typer.Option(min=1, help="Prompts per set (default: all 200).")] = None,
    images_per_prompt: Annotated[int | None, typer.Option(min=1, help="Images per prompt and system.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Denoising steps per image (default: the run config's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per generation and metric batch.")] = None,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Evaluate a trained adapter on the MG/MC prompts against its baselines and the champion (a compression run's
    student: against its teacher on the English MG prompts); write the report."""
    from pea.evaluate.stage import evaluate_stage
    from pea.languages import get_language
    from pea.names import check_name
    from pea.profiles import check_mlflow

    run = _run(config, preset, eval__max_prompts=max_prompts, eval__images_per_prompt=images_per_prompt,
               eval__steps=steps, eval__batch_size=batch_size)
    if run_name:  # bad input is refused before check_mlflow creates a SQLite store's folder
        check_name(run_name, "run name")
    language, prof = get_language(lang), _profile(profile)
    check_mlflow(prof.mlflow_tracking_uri)  # before the models load
    summary = evaluate_stage(prof, language, _preset(run), run_name, run.eval, lines(typer.echo))
    typer.echo(f"report: {summary.report}")


@app.command()
def register(
    lang: LangOpt,
    run_name: Annotated[str | None, typer.Option(help="The evaluated training run (default: pea-<lang>-<preset>).")] = None,
    tolerance: Annotated[float | None, typer.Option(min=0.0, help="Largest drop allowed on the guard metric "
                                                    "(MG ImageReward; default: the run config's).")] = None,
    profile: ProfileOpt = "local",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
):
    """Register an evaluated run as a version of pea-<lang> (a compression run's student: pea-unet-<recipe>); the
    gate decides whether it becomes champion."""
    from pea.evaluate.stage import register_stage
    from pea.languages import get_language
    from pea.names import check_name
    from pea.profiles import check_mlflow

    run = _run(config, preset, gate__tolerance=tolerance)
    if run_name:  # bad input is refused before check_mlflow creates a SQLite store's folder
        check_name(run_name, "run name")
    language, prof = get_language(lang), _profile(profile, interactive=True)
    check_mlflow(prof.mlflow_tracking_uri)
    out = register_stage(prof, language, _preset(run), run_name, run.gate)
    verdict = "champion" if out.promoted else "challenger"
    typer.echo(f"{out.model} version {out.version}{'' if out.new_version else ' (registered before)'}: "
               f"{verdict} -- {out.reason}")


@app.command()
def models(lang: LangOpt, profile: ProfileOpt = "local"):
    """List the registered versions of pea-<lang> with their aliases, gate decisions and primary metrics."""
    from pea.languages import get_language
    from pea.names import model_name

    name, prof = model_name(get_language(lang).code), _profile(profile, interactive=True)
    exists = _registry_exists(prof)  # checks the server before torch is imported
    from rich.console import Console
    from rich.table import Table

    from pea.registry import list_versions

    rows = list_versions(prof.mlflow_tracking_uri, lang) if exists else []
    if not rows:
        typer.echo(f"{name}: no registered versions in {redact(prof.mlflow_tracking_uri)}")
        return
    table = Table(title=f"{name} ({redact(prof.mlflow_tracking_uri)})")
    for col in ("version", "aliases", "primary metric", "guard metric"):
        table.add_column(col, no_wrap=True)
    table.add_column("gate", overflow="fold")
    for r in rows:
        table.add_row(r["version"], ", ".join(sorted(r["aliases"])) or "-", f"{r['primary']} {r['primary_value']}",
                      f"{r['guard']} {r['guard_value']}", f"{r['decision']}: {r['reason']}" if r["decision"] else "-")
    Console(width=180).print(table)


@app.command()
def dashboard(
    out: Annotated[Path | None, typer.Option(help="Where to write the page (default: <data dir>/leaderboard.html).")] = None,
    profile: ProfileOpt = "local",
):
    """Write the leaderboard page: per language, champion and challenger with their metrics and samples."""
    from pea.languages import registry
    from pea.leaderboard import write_leaderboard

    prof = _profile(profile, interactive=True)
    langs = list(registry()) if _registry_exists(prof) else []
    path = write_leaderboard(prof.mlflow_tracking_uri, langs, out or prof.data_dir / "leaderboard.html")
    typer.echo(f"wrote {path}")


def _registry_exists(prof) -> bool:
    """A local SQLite registry that was never written is not created just to be listed."""
    from pea.profiles import check_mlflow

    if prof.mlflow_tracking_uri.startswith("sqlite:///"):
        return Path(prof.mlflow_tracking_uri.removeprefix("sqlite:///")).exists()
    check_mlflow(prof.mlflow_tracking_uri)
    return True


@app.command("build-toy")
def build_toy(profile: ProfileOpt = "local"):
    """Build the toy world (teacher and judge; students are built per language when first used) into the model
    cache, or find it by digest."""
    from pea.progress import stage_line
    from pea.toy.build import ensure_toy

    model_cache = _profile(profile).model_cache
    with stage_line(sys.stderr) as line:
        line.start(1, 1, "toy world")
        folder = ensure_toy(model_cache)
        line.done()
    typer.echo(f"toy world: {folder}")


def main() -> None:
    try:
        app()
    except PeaError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e.problem}", err=True)
        if e.fix:
            typer.echo(f"  fix: {e.fix}", err=True)
        sys.exit(2)
    except OSError as e:
        # the safety net for a filesystem error no stage turned into a PeaError: the path and the OS's reason
        # are what the user acts on, the traceback only with --debug
        if _state["debug"]:
            raise
        where = " -> ".join(str(name) for name in (e.filename, e.filename2) if name is not None)
        typer.echo(redact(f"error: {where}: {e.strerror}" if where and e.strerror else f"error: {e}"), err=True)
        sys.exit(2)
    except Exception as e:
        # MLflow's errors (a server that fails mid-command) quote the request URI, password included
        if _state["debug"] or type(e).__module__.split(".")[0] != "mlflow":
            raise
        typer.echo(redact(f"error: MLflow: {e}".splitlines()[0]), err=True)
        sys.exit(2)
