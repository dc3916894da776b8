"""One way to load every frozen model, whether it comes from the hub, a local path or a tiny build."""

from pathlib import Path

from pea.errors import PeaError
from pea.languages import EncoderSpec
from pea.models.tiny import ensure_built, tiny_names
from pea.presets import Preset


TOY_STUDENT = "toy-student-"


def _built(name: str, model_cache: Path) -> Path:
    """Folders of built-locally models: tiny ones, and the toy world's teacher and students."""
    if name == "toy" or name.startswith(TOY_STUDENT):
        from pea.toy.build import ensure_toy

        world = ensure_toy(Path(model_cache))
        return world / ("teacher" if name == "toy" else f"student-{name.removeprefix(TOY_STUDENT)}")
    return ensure_built(name, model_cache)


def is_built_locally(name: str) -> bool:
    return name in tiny_names() or name == "toy" or name.startswith(TOY_STUDENT)


def pipeline_source(preset: Preset, model_cache: Path) -> str:
    """What from_pretrained is given: the hub id or path of a real preset, the built folder of a local one."""
    if preset.is_built_locally:
        return str(_built(preset.build, model_cache))
    return preset.model_id


def encoder_source(spec: EncoderSpec, model_cache: Path) -> str:
    if is_built_locally(spec.id):
        source = _built(spec.id, model_cache)
        if not source.exists():
            raise PeaError(f"the toy world has no student encoder {spec.id!r}", "use one of the toy languages: ko, zh, ja, ru, it")
        return str(source)
    return spec.id


def model_source(name: str, model_cache: Path) -> str:
    """What from_pretrained is given for any other model id: its built folder if pea builds it, else the id."""
    return str(_built(name, model_cache)) if is_built_locally(name) else name


def load_pipeline(preset: Preset, model_cache: Path, pipeline_cls=None, **kwargs):
    """The base model's diffusers pipeline (or `pipeline_cls`, e.g. an inpainting or ControlNet one)."""
    import diffusers

    cls = pipeline_cls or (
        diffusers.StableDiffusionXLPipeline if preset.family == "sdxl" else diffusers.StableDiffusionPipeline
    )
    source = pipeline_source(preset, model_cache)
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as e:
        raise PeaError(
            f"cannot load base model {source!r} for preset {preset.name!r}: {e}",
            "check the hub id or path, your network or HF_HOME cache, or use a tiny preset",
        ) from e


def load_transformers_class(qualified: str):
    """`transformers:<Class>` -> the class."""
    import transformers

    library, _, name = qualified.partition(":")
    if library != "transformers" or not hasattr(transformers, name):
        raise PeaError(f"unsupported loader {qualified!r}", "use transformers:<ClassName>")
    return getattr(transformers, name)


def freeze(pipe):
    """Every model in the pipeline to eval mode with requires_grad off: pea trains the adapter only."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe
