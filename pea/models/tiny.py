"""Models made from the configs pea ships, so that every code path runs without a download.

A config folder under pea/resources/configs/ holds one JSON per pipeline component, named after the
component (unet.json, vae.json, text_encoder.json, ...); the folder's name is its build name. The real repos'
folders (sd15, sdxl, ssd-1b, sdxl-turbo) also hold their model_index.json and scheduler.json as the hub has
them; a tiny build takes those two from the real repo it mirrors and only its sizes from its own folder. The
tiny ones are saved in the hub's own layout (a diffusers pipeline folder; a transformers model folder) and
then loaded by the same from_pretrained calls as a hub id, so tests exercise the real loading code. The
real-architecture ones (`sdxl`, `sd15`) are only made in memory, for timing on a GPU with random weights.
Weights are random but seeded; a build is written under a temporary name and renamed, so an interrupted
build never leaves a half-written model behind.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pea.errors import PeaError
from pea.resources import resource_path

ENCODER_BUILDS = ("tiny-byt5", "tiny-mt")
REAL_PIPELINES = ("sd15", "sdxl", "ssd-1b", "sdxl-turbo")  # configs/<name>/ holds the real repo's configs
PIPELINE_BUILDS = {"tiny-sd15": "sd15", "tiny-sdxl": "sdxl"}  # tiny build -> the real repo it mirrors
METRIC_BUILDS = ("tiny-clip", "tiny-openclip", "tiny-imagereward")  # pea/models/tiny_metrics.py
STANDIN_BUILDS = ("tiny-chinese-clip", "tiny-altclip", "tiny-clip-ko")  # pea/models/tiny_encoders.py


def tiny_names() -> tuple[str, ...]:
    return tuple(PIPELINE_BUILDS) + ENCODER_BUILDS + METRIC_BUILDS + STANDIN_BUILDS


def ensure_built(name: str, model_cache: Path) -> Path:
    """Build tiny model `name` under `model_cache` unless it is there already, built from the same configs
    (a build from older configs, e.g. before tiny-sd15 mirrored SD1.5's PNDM scheduler, is rebuilt)."""
    target = Path(model_cache) / name
    digest = _configs_digest(name)
    marker = target / ".complete"
    if marker.exists() and marker.read_text().strip() == digest:
        return target
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if name in ENCODER_BUILDS:
        _save_byt5(name, tmp, resource_path("configs", name))
    elif name in METRIC_BUILDS:
        from pea.models import tiny_metrics

        {"tiny-clip": tiny_metrics.save_tiny_clip, "tiny-openclip": tiny_metrics.save_tiny_openclip,
         "tiny-imagereward": tiny_metrics.save_tiny_image_reward}[name](tmp)
    elif name in STANDIN_BUILDS:
        from pea.models.tiny_encoders import ENCODER_STANDINS

        ENCODER_STANDINS[name](tmp)
    else:
        make_pipeline(name).save_pretrained(tmp, safe_serialization=True)
    (tmp / ".complete").write_text(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _configs_digest(name: str) -> str:
    """sha256 over the config files a build reads: its own folder's and the real repo's it mirrors."""
    folders = [resource_path("configs", n) for n in (name, PIPELINE_BUILDS.get(name)) if n]
    files = sorted(f for folder in folders if folder.is_dir() for f in folder.glob("*.json"))
    return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()


def _config(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.exists():
        raise PeaError(f"pea ships no {name} for {folder.name!r}",
                       "build one of: " + ", ".join(REAL_PIPELINES + tuple(PIPELINE_BUILDS)))
    return json.loads(path.read_text())


def make_pipeline(name: str, seed: int = 0, layout: str | None = None):
    """A pipeline with seeded random weights, sized by configs/<name>/ and laid out as the real repo `layout`
    (default: the one `name` mirrors, or `name` itself) says: its model_index.json picks the pipeline and
    component classes, its scheduler.json the scheduler, so a tiny build loads like the real repo."""
    import diffusers
    import torch

    sizes = resource_path("configs", name)
    real = resource_path("configs", layout or PIPELINE_BUILDS.get(name, name))
    index = _config(real, "model_index.json")
    torch.manual_seed(seed)
    parts = {part: _component(part, entry[1], sizes, real) if entry[1] else None
             for part, entry in index.items() if not part.startswith("_") and isinstance(entry, list)}
    flags = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    return getattr(diffusers, index["_class_name"])(**parts, **flags)


def _component(part: str, class_name: str, sizes: Path, real: Path):
    """One pipeline component of class `class_name`, from configs/<sizes>/<part>.json (the scheduler from
    the real repo's own config)."""
    import diffusers
    import transformers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    if part == "scheduler":
        return getattr(diffusers, class_name).from_config(_config(real, "scheduler.json"))
    if class_name == "CLIPTokenizer":  # as long as its encoder's positions (77 in every real repo)
        encoder = _config(sizes, part.replace("tokenizer", "text_encoder") + ".json")
        return _clip_tokenizer(encoder["max_position_embeddings"])
    config = _config(sizes, f"{part}.json")
    builders = {
        "UNet2DConditionModel": lambda: diffusers.UNet2DConditionModel.from_config(config),
        "AutoencoderKL": lambda: diffusers.AutoencoderKL.from_config(config),
        "CLIPTextModel": lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**config)),
        "CLIPTextModelWithProjection":
            lambda: transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**config)),
        "StableDiffusionSafetyChecker": lambda: StableDiffusionSafetyChecker(transformers.CLIPConfig(**config)),
        "CLIPImageProcessor": lambda: transformers.CLIPImageProcessor(**config),
    }
    if class_name not in builders:
        raise PeaError(f"cannot build a {class_name} for {part!r}", f"use one of: {', '.join(builders)}")
    return builders[class_name]()


def _clip_tokenizer(max_length: int):
    """The real CLIP BPE tokenizer, from the merges open_clip ships."""
    from transformers import CLIPTokenizer

    from pea.models.clip_vocab import write_clip_tokenizer_files

    with tempfile.TemporaryDirectory() as vocab:
        write_clip_tokenizer_files(Path(vocab))
        return CLIPTokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt", model_max_length=max_length)


def _save_byt5(name: str, out: Path, cfg: Path) -> None:
    """Byte-level T5 models read every language without a vocabulary file: tiny-byt5 is a student text
    encoder, tiny-mt a (random, so nonsense-producing) seq2seq model for the translation code path."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel, T5ForConditionalGeneration

    torch.manual_seed(0)
    model_cls = T5EncoderModel if name == "tiny-byt5" else T5ForConditionalGeneration
    model_cls(T5Config(**_config(cfg, "config.json"))).save_pretrained(out, safe_serialization=True)
    ByT5Tokenizer().save_pretrained(out)
