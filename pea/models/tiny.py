"""Models made from the configs pea ships, so that every code path runs without a download.

A config folder under pea/resources/configs/ holds one JSON per component (unet, vae, scheduler,
text_encoder[, text_encoder_2]); the folder's name is its build name. The tiny ones are saved in the hub's
own layout (a diffusers pipeline folder; a transformers model folder) and then loaded by the same
from_pretrained calls as a hub id, so tests exercise the real loading code. The real-architecture ones
(`sdxl`, `sd15`) are only made in memory, for timing on a GPU with random weights.
Weights are random but seeded; a build is written under a temporary name and renamed, so an interrupted
build never leaves a half-written model behind.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from pea.resources import resource_path

ENCODER_BUILDS = ("tiny-byt5", "tiny-mt")
PIPELINE_BUILDS = ("tiny-sd15", "tiny-sdxl")
METRIC_BUILDS = ("tiny-clip", "tiny-openclip", "tiny-imagereward")  # pea/models/tiny_metrics.py


def tiny_names() -> tuple[str, ...]:
    return PIPELINE_BUILDS + ENCODER_BUILDS + METRIC_BUILDS


def ensure_built(name: str, model_cache: Path) -> Path:
    """Build tiny model `name` under `model_cache` unless it is there already; return its folder."""
    target = Path(model_cache) / name
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if name in ENCODER_BUILDS:
        _save_byt5(name, tmp, resource_path("configs", name))
    elif name in METRIC_BUILDS:
        from pea.models import tiny_metrics

        {"tiny-clip": tiny_metrics.save_tiny_clip, "tiny-openclip": tiny_metrics.save_tiny_openclip,
         "tiny-imagereward": tiny_metrics.save_tiny_image_reward}[name](tmp)
    else:
        make_pipeline(name).save_pretrained(tmp, safe_serialization=True)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _config(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def make_pipeline(name: str, seed: int = 0):
    """An SD1.5- or SDXL-style pipeline (by whether a text_encoder_2 config exists) with seeded random weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from pea.models.clip_vocab import write_clip_tokenizer_files

    cfg = resource_path("configs", name)
    sdxl = (cfg / "text_encoder_2.json").exists()
    torch.manual_seed(seed)
    parts = dict(
        unet=UNet2DConditionModel.from_config(_config(cfg, "unet.json")),
        vae=AutoencoderKL.from_config(_config(cfg, "vae.json")),
        scheduler=EulerDiscreteScheduler.from_config(_config(cfg, "scheduler.json")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_config(cfg, "text_encoder.json"))),
    )
    with tempfile.TemporaryDirectory() as vocab:
        write_clip_tokenizer_files(Path(vocab))
        tokenizer = CLIPTokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt", model_max_length=77)
    parts["tokenizer"] = tokenizer
    if sdxl:
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**_config(cfg, "text_encoder_2.json")))
        parts["tokenizer_2"] = tokenizer
        return StableDiffusionXLPipeline(**parts)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _save_byt5(name: str, out: Path, cfg: Path) -> None:
    """Byte-level T5 models read every language without a vocabulary file: tiny-byt5 is a student text
    encoder, tiny-mt a (random, so nonsense-producing) seq2seq model for the translation code path."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel, T5ForConditionalGeneration

    torch.manual_seed(0)
    model_cls = T5EncoderModel if name == "tiny-byt5" else T5ForConditionalGeneration
    model_cls(T5Config(**_config(cfg, "config.json"))).save_pretrained(out, safe_serialization=True)
    ByT5Tokenizer().save_pretrained(out)
