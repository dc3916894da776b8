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
        from pea.toy.build import ensure_student, ensure_toy

        world = ensure_toy(Path(model_cache))
        return world / "teacher" if name == "toy" else ensure_student(world, name.removeprefix(TOY_STUDENT))
    return ensure_built(name, model_cache)


def is_built_locally(name: str) -> bool:
    return name in tiny_names() or name == "toy" or name.startswith(TOY_STUDENT)


def pipeline_source(preset: Preset, model_cache: Path) -> str:
    """What from_pretrained is given: the hub id or path of a real preset, the built folder of a local one."""
    if preset.is_built_locally:
        return str(_built(preset.build, model_cache))
    return preset.model_id


def encoder_source(spec: EncoderSpec, model_cache: Path) -> str:
    return model_source(spec.id, model_cache)


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


def load_frozen_pipeline(preset: Preset, model_cache: Path, device, **kwargs):
    """The base pipeline frozen on `device`, loaded straight into the dtypes pea/models/precision.py picks
    (half on a GPU, the VAE in fp32 where it must be; fp32 on a CPU), never as fp32 weights under autocast.
    The VAE is read in fp32 and cast down only where its config allows half: a VAE that must run in fp32
    never has its weights rounded through half precision on the way."""
    import torch

    models, _ = frozen_dtypes(preset.family, torch.device(device), {})
    pipe = load_pipeline(preset, model_cache, dtype={"default": models, "vae": torch.float32}, **kwargs)
    return place_frozen(pipe, preset.family, device)


def frozen_dtypes(family: str, device, vae_config) -> tuple:
    """(models, VAE) dtypes on `device` for a pipeline of `family` whose VAE config is `vae_config`."""
    import torch

    from pea.models.precision import frozen_dtype, vae_dtype

    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return frozen_dtype(device.type, bf16), vae_dtype(vae_config, family, device.type, bf16)


def place_frozen(pipe, family: str, device):
    """`pipe` frozen on `device` in the dtypes frozen_dtypes picks, component by component (a pipeline-wide
    .to(dtype) would round the VAE through half). Pipelines built in memory, such as the real architecture
    with random weights in the benchmarks, take the same dtypes as loaded ones."""
    import torch

    device = torch.device(device)
    models, vae = frozen_dtypes(family, device, pipe.vae.config if pipe.vae is not None else {})
    for name, component in freeze(pipe).components.items():
        if isinstance(component, torch.nn.Module):
            dtype = vae if name == "vae" else models
            # a dtype only where it changes: diffusers warns on every .to(dtype), even with nothing to keep in fp32
            component.to(device, *([] if component.dtype == dtype else [dtype]))
    return pipe


def load_transformers_class(qualified: str):
    """`transformers:<Class>` -> the class."""
    import transformers

    library, _, name = qualified.partition(":")
    if library != "transformers" or not hasattr(transformers, name):
        raise PeaError(f"unsupported loader {qualified!r}", "use transformers:<ClassName>")
    return getattr(transformers, name)


def load_weights_strictly(model_cls, source: str):
    """`model_cls.from_pretrained(source)`, refusing a checkpoint whose weights do not all fit the class.

    transformers fills every weight a checkpoint lacks with random init and only logs it (a log that
    TRANSFORMERS_VERBOSITY=error hides): a tower class such as ChineseCLIPTextModel loaded from a dual CLIP
    checkpoint matches no key at all, and pea would distil from noise. So the loading report itself is checked.
    transformers already drops from it what is legitimately absent or left over: non-persistent buffers, and the
    `position_ids` that older checkpoints stored. Mismatched shapes are reported (not raised) to be named here.
    """
    model, info = model_cls.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True)
    problems = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                "mismatched": sorted(key for key, *_ in info["mismatched_keys"])}
    if any(problems.values()):
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in problems.items() if keys)
        first = ", ".join([key for keys in problems.values() for key in keys][:3])
        raise PeaError(f"{source!r} does not fit {model_cls.__name__}: {counts} weights (e.g. {first})",
                       _class_fix(model_cls, source))
    return model


def _class_fix(model_cls, source: str) -> str:
    """The fix names the class the checkpoint's config.json says it holds, when that is another class."""
    from transformers import PretrainedConfig

    held = (PretrainedConfig.get_config_dict(source)[0].get("architectures") or [None])[0]
    if held and held != model_cls.__name__:
        return f"use loader transformers:{held}, the class the checkpoint holds"
    return "the checkpoint does not match its own config.json: re-download it (delete it from the HF_HOME cache)"


def freeze(pipe):
    """Every model in the pipeline to eval mode with requires_grad off: pea trains the adapter only."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe
