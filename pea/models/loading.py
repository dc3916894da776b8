"""One way to load every frozen model, whether it comes from the hub, a local path or a tiny build."""

import contextlib
import logging
from pathlib import Path

from pea.errors import PeaError
from pea.languages import EncoderSpec
from pea.models.tiny import ensure_built, tiny_names
from pea.presets import Preset


TOY_STUDENT = "toy-student-"


def _built(name: str, model_cache: Path) -> Path:
    """Folders of built-locally models: tiny ones, the encoder variants' stand-ins, and the toy world's teacher
    and students."""
    from pea.models.tiny_encoders import VARIANT_STANDINS, ensure_variant_standin

    if name in VARIANT_STANDINS:
        return ensure_variant_standin(name, model_cache)
    if name == "toy" or name.startswith(TOY_STUDENT):
        from pea.toy.build import ensure_student, ensure_toy

        world = ensure_toy(Path(model_cache))
        return world / "teacher" if name == "toy" else ensure_student(world, name.removeprefix(TOY_STUDENT))
    return ensure_built(name, model_cache)


def is_built_locally(name: str) -> bool:
    from pea.models.tiny_encoders import VARIANT_STANDINS

    return name in tiny_names() or name in VARIANT_STANDINS or name == "toy" or name.startswith(TOY_STUDENT)


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
        raise PeaError(f"unsupported loader {qualified!r}", "use transformers:<ClassName> (or, for a model, "
                       "open_clip:<architecture>)")
    return getattr(transformers, name)


def load_weights_strictly(model_cls, source: str):
    """`model_cls.from_pretrained(source)`, refusing a checkpoint whose weights do not all fit the class.

    transformers fills every weight a checkpoint lacks with random init and only logs it (a log that
    TRANSFORMERS_VERBOSITY=error hides): a tower class such as ChineseCLIPTextModel loaded from a dual CLIP
    checkpoint matches no key at all, and pea would distil from noise. So the loading report itself is checked.
    transformers already drops from it what is legitimately absent or left over: non-persistent buffers, and the
    `position_ids` that older checkpoints stored. Mismatched shapes are reported (not raised) to be named here.
    The one other legitimate leftover is the decoder half of an encoder-decoder checkpoint read by an encoder
    class (see `decoder_half`); a missing encoder weight is still refused.
    """
    with _held_load_report() as report:
        model, info = model_cls.from_pretrained(source, output_loading_info=True, ignore_mismatched_sizes=True)
    unused = decoder_half(model, source) if info["unexpected_keys"] else ()
    problems = {"missing": sorted(info["missing_keys"]),
                "unexpected": sorted(key for key in info["unexpected_keys"] if not key.startswith(unused)),
                "mismatched": sorted(key for key, *_ in info["mismatched_keys"])}
    if any(problems.values()):
        counts = ", ".join(f"{len(keys)} {kind}" for kind, keys in problems.items() if keys)
        first = ", ".join([key for keys in problems.values() for key in keys][:3])
        report.release()
        raise PeaError(f"{source!r} does not fit {model_cls.__name__}: {counts} weights (e.g. {first})",
                       _class_fix(model_cls, source))
    return model


class _LoadReport(logging.Filter):
    """Holds back the table transformers logs after a load that did not match the checkpoint key for key. pea
    decides from the loading info itself: a refused load shows the table with its error, an accepted one (an
    encoder reading an encoder-decoder checkpoint) has nothing to report."""

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.held.append(record)
            return False
        return True

    def release(self) -> None:
        for record in self.held:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def _held_load_report():
    report = _LoadReport()
    logger = logging.getLogger("transformers.modeling_utils")  # where transformers 5 logs the table
    logger.addFilter(report)
    try:
        yield report
    finally:
        logger.removeFilter(report)


def decoder_half(model, source: str) -> tuple[str, ...]:
    """The key prefixes an encoder class leaves unread in a whole encoder-decoder checkpoint, on purpose: mT5 is
    published as MT5ForConditionalGeneration (google/mt5-xl's config.json: `is_encoder_decoder` true), and its
    student is the encoder alone. transformers itself ignores `decoder.*` for T5EncoderModel but reports it for
    MT5EncoderModel (5.23), and the untied `lm_head` for both; this makes the two agree. The checkpoint's own
    config.json says what it holds (the loaded encoder's config has is_encoder_decoder turned off). A model with
    a decoder of its own, or from an encoder-only checkpoint, leaves nothing unread."""
    from transformers import PretrainedConfig

    held = PretrainedConfig.get_config_dict(source)[0]
    if held.get("is_encoder_decoder") and not hasattr(model, "decoder"):
        return ("decoder.", "lm_head.")
    return ()


def _class_fix(model_cls, source: str) -> str:
    """The fix names the class the checkpoint's config.json says it holds, when that is another class."""
    from transformers import PretrainedConfig

    held = (PretrainedConfig.get_config_dict(source)[0].get("architectures") or [None])[0]
    if held and held != model_cls.__name__:
        return f"use loader transformers:{held}, the class the checkpoint holds"
    return "the checkpoint does not match its own config.json: re-download it (delete it from the HF_HOME cache)"


# the safetensors names open_clip looks for in a model folder, in its own order (open_clip 3.3,
# factory._find_checkpoint_in_dir); its pickles (open_clip_pytorch_model.bin, the only weights of
# laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k) pea does not load
OPEN_CLIP_SAFETENSORS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")


def load_open_clip_text(arch: str, source: str, model_cache: Path):
    """The Hugging Face text transformer inside open_clip CLIP `arch` (e.g. XLM-R large in
    xlm-roberta-large-ViT-H-14), its weights read from the safetensors in `source` (a hub id or folder).

    open_clip builds the whole CLIP (the text tower's config read from its `hf_model_name`, a hub id or a
    built-locally name resolved like any other) and loads the checkpoint with strict=True, so a missing or
    unexpected weight raises; the vision tower is dropped after. A folder may hold its own `<arch>.json`, as the
    built-locally stand-ins do: the real architectures are in open_clip's own table."""
    import open_clip

    weights = open_clip_weights(source)
    own_arch = Path(weights).parent / f"{arch}.json"
    if own_arch.is_file():
        open_clip.add_model_config(own_arch)
    config = open_clip.get_model_config(arch)
    if config is None or "hf_model_name" not in config.get("text_cfg", {}):
        raise PeaError(f"open_clip has no architecture {arch!r} with a Hugging Face text tower",
                       "use one whose text_cfg names hf_model_name, e.g. open_clip:xlm-roberta-large-ViT-H-14")
    text = config["text_cfg"]
    text_cfg = dict(text, hf_model_name=model_source(text["hf_model_name"], model_cache), hf_model_pretrained=False)
    try:
        clip = open_clip.create_model(arch, pretrained=weights, require_pretrained=True, text_cfg=text_cfg)
    except RuntimeError as e:  # load_state_dict(strict=True): missing, unexpected or mis-shaped weights
        raise PeaError(f"{weights!r} does not fit open_clip {arch!r}: {' '.join(str(e).split())[:300]}",
                       "the checkpoint is of another architecture: check the loader's open_clip:<arch>") from e
    return clip.text.transformer


def open_clip_weights(source: str) -> str:
    """The safetensors checkpoint of an open_clip model: in the folder `source`, else fetched from the hub repo
    `source` (only that file)."""
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=list(OPEN_CLIP_SAFETENSORS)))
    for name in OPEN_CLIP_SAFETENSORS:
        if (folder / name).is_file():
            return str(folder / name)
    pickles = sorted(path.name for path in folder.glob("*") if path.suffix in (".bin", ".pt", ".pth"))
    raise PeaError(f"{source!r} holds no {' or '.join(OPEN_CLIP_SAFETENSORS)}"
                   + (f", only the pickle {', '.join(pickles)}" if pickles else ""),
                   "pea loads safetensors only: convert the pickle once (torch.load with weights_only=True, then "
                   "safetensors.torch.save_file as open_clip_model.safetensors) into a folder with the repo's "
                   "tokenizer.json, and give that folder as the encoder's id")


def freeze(pipe):
    """Every model in the pipeline to eval mode with requires_grad off: pea trains the adapter only."""
    import torch

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe
