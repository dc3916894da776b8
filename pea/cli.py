"""The `pea` command. Heavy imports (torch, diffusers, Ray, Prefect) happen inside the commands that need
them, so that `pea --help` and `pea languages` answer at once."""

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pea.errors import PeaError

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


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False):
    _state["debug"] = debug
    # the libraries' own bars and hints would drown pea's output; --debug keeps them
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _profile(name: str, preset: str | None = None):
    from pea.presets import get_preset
    from pea.profiles import load_profile

    env = dict(os.environ)
    if preset:
        env["PEA_PRESET"] = preset
    profile = load_profile(name, env=env, cwd=Path.cwd())
    get_preset(profile.preset)
    return profile


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
    typer.echo(yaml.safe_dump(prof.model_dump(mode="json"), sort_keys=False).rstrip())
    if check:
        check_mlflow(prof.mlflow_tracking_uri)
        typer.echo(f"mlflow: {prof.mlflow_tracking_uri} reachable")


@app.command("train-language")
def train_language(
    lang: LangOpt,
    profile: ProfileOpt = "local",
    preset: Annotated[str | None, typer.Option(help="Override the profile's preset.")] = None,
):
    """Run the whole per-language pipeline on the active profile."""
    from pea.languages import get_language
    from pea.pipeline import run_language

    language = get_language(lang)
    run_language(language, _profile(profile, preset), echo=typer.echo)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt, in the adapter's language.")],
    lang: LangOpt,
    adapter: Annotated[Path, typer.Option(help="Folder of a saved adapter (adapter.json + adapter.safetensors).")],
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("out.png"),
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps.")] = 30,
    guidance: Annotated[float, typer.Option(min=0.0, help="Classifier-free guidance scale.")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    profile: ProfileOpt = "local",
    preset: Annotated[str | None, typer.Option(help="Override the profile's preset.")] = None,
):
    """Generate an image from a native-language prompt with a trained adapter."""
    from pea.generate import generate_image

    prof = _profile(profile, preset)
    path = generate_image(prompt, lang, adapter, out, prof, negative=negative, steps=steps, guidance=guidance, seed=seed)
    typer.echo(f"wrote {path}")


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
