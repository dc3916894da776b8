"""Tiny models built from the configs pea ships, so that every code path runs without a download.

They are saved in the same layout as their hub counterparts (a diffusers pipeline folder; a transformers
model folder) and then loaded by the same from_pretrained calls, so tests exercise the real loading code.
Weights are random but deterministic (seeded), and a build is written to a temporary folder and renamed,
so an interrupted build never leaves a half-written model behind.
"""

import json
import os
import shutil
from pathlib import Path

from pea.resources import resource_path

_BUILDERS = {}


def _builder(name):
    def register(fn):
        _BUILDERS[name] = fn
        return fn

    return register


def tiny_names() -> list[str]:
    return list(_BUILDERS)


def ensure_built(name: str, model_cache: Path) -> Path:
    """Build tiny model `name` under `model_cache` unless it is there already; return its folder."""
    target = Path(model_cache) / name
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _BUILDERS[name](tmp, resource_path("configs", name))
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _config(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _seed() -> None:
    import torch

    torch.manual_seed(0)


def _clip_text_parts(out: Path, cfg: Path, names: list[str]):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from pea.models.clip_vocab import write_clip_tokenizer_files

    vocab_dir = out / "_vocab"
    write_clip_tokenizer_files(vocab_dir)
    parts = {}
    for i, name in enumerate(names):
        model_cls = CLIPTextModel if i == 0 else CLIPTextModelWithProjection
        parts[name] = model_cls(CLIPTextConfig(**_config(cfg, f"{name}.json")))
        tok = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77)
        parts[name.replace("text_encoder", "tokenizer")] = tok
    shutil.rmtree(vocab_dir)
    return parts


def _unet_vae_scheduler(cfg: Path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    return dict(
        unet=UNet2DConditionModel.from_config(_config(cfg, "unet.json")),
        vae=AutoencoderKL.from_config(_config(cfg, "vae.json")),
        scheduler=EulerDiscreteScheduler.from_config(_config(cfg, "scheduler.json")),
    )


@_builder("tiny-sd15")
def _build_tiny_sd15(out: Path, cfg: Path) -> None:
    from diffusers import StableDiffusionPipeline

    _seed()
    parts = _unet_vae_scheduler(cfg) | _clip_text_parts(out, cfg, ["text_encoder"])
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(out, safe_serialization=True)


@_builder("tiny-sdxl")
def _build_tiny_sdxl(out: Path, cfg: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    _seed()
    parts = _unet_vae_scheduler(cfg) | _clip_text_parts(out, cfg, ["text_encoder", "text_encoder_2"])
    StableDiffusionXLPipeline(**parts).save_pretrained(out, safe_serialization=True)


@_builder("tiny-byt5")
def _build_tiny_byt5(out: Path, cfg: Path) -> None:
    """A byte-level T5 encoder: reads every language without a vocabulary file."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    _seed()
    T5EncoderModel(T5Config(**_config(cfg, "config.json"))).save_pretrained(out, safe_serialization=True)
    ByT5Tokenizer().save_pretrained(out)
