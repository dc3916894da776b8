"""Tiny stand-ins for the external systems an evaluation scores (pea/resources/systems.yaml), saved in each
real repo's own layout so that pea/evaluate/systems.py loads them through exactly the calls a GPU run makes.

tiny-altdiffusion-m18, for BAAI/AltDiffusion-m18 (checked 2026-11 against the repo's files on the hub):
model_index.json, scheduler and tokenizer configs copied verbatim from the repo (configs/altdiffusion-m18/);
every model folder holds config.json plus `.bin` weights, as the repo does (it has no safetensors);
`text_encoder` is diffusers' RobertaSeriesModelWithTransformation with `has_pre_transformation` (the m18
variant, diffusers PR #2993: the UNet reads a projection of the penultimate XLM-R layer); the tokenizer is
an XLM-R sentencepiece unigram model in `sentencepiece.bpe.model`, the repo's only vocabulary file. The
UNet has SD 2.1's per-block head counts and linear projections. project_dim (24) differs from the XLM-R
width (32), as 1024 and 1024 would not: a UNet wired to the wrong width fails the tests.
"""

import hashlib
import json
import shutil
from pathlib import Path

import torch

from pea.errors import PeaError
from pea.models.build_once import build_once
from pea.models.tiny_encoders import _SENTENCES, _save_bin
from pea.resources import resource_path

STANDINS = {"tiny-altdiffusion-m18": "altdiffusion-m18"}  # build -> the real repo whose layout it copies


def ensure_standin(name: str, model_cache: Path) -> Path:
    """Build stand-in `name` under `model_cache` unless a build from the same configs is there; written under
    a temporary name and renamed, so an interrupted build never leaves half a model behind."""
    if name not in STANDINS:
        raise PeaError(f"pea builds no system stand-in {name!r}", f"use one of: {', '.join(STANDINS)}")
    return build_once(Path(model_cache) / name, _digest(name), save_tiny_altdiffusion)


def _digest(name: str) -> str:
    files = sorted(f for n in (name, STANDINS[name]) for f in resource_path("configs", n).glob("*.json"))
    return hashlib.sha256(b"".join(f.name.encode() + f.read_bytes() for f in files)).hexdigest()


def _config(name: str, part: str) -> dict:
    return json.loads(resource_path("configs", name, f"{part}.json").read_text())


def save_tiny_altdiffusion(out: Path):
    """The AltDiffusion-m18 layout with seeded random weights; returns the text encoder it saved."""
    import diffusers
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig, RobertaSeriesModelWithTransformation)
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    sizes, real = "tiny-altdiffusion-m18", "altdiffusion-m18"
    out.mkdir(parents=True)
    shutil.copy(resource_path("configs", real, "model_index.json"), out / "model_index.json")
    (out / "scheduler").mkdir()
    shutil.copy(resource_path("configs", real, "scheduler.json"), out / "scheduler" / "scheduler_config.json")
    vocab_size = _save_sentencepiece_tokenizer(out / "tokenizer")
    torch.manual_seed(0)
    config = RobertaSeriesConfig(**_config(sizes, "text_encoder"), vocab_size=vocab_size)
    text_encoder = RobertaSeriesModelWithTransformation(config)
    _save_bin(text_encoder, out / "text_encoder")
    for part, cls in (("unet", diffusers.UNet2DConditionModel), ("vae", diffusers.AutoencoderKL)):
        cls.from_config(_config(sizes, part)).save_pretrained(out / part, safe_serialization=False)
    _save_bin(StableDiffusionSafetyChecker(CLIPConfig(**_config(sizes, "safety_checker"))), out / "safety_checker")
    CLIPImageProcessor(**_config(sizes, "feature_extractor")).save_pretrained(out / "feature_extractor")
    return text_encoder


def _save_sentencepiece_tokenizer(out: Path) -> int:
    """sentencepiece.bpe.model (a unigram model trained here, written as sentencepiece's ModelProto: <unk>
    <s> </s> first, which XLMRobertaTokenizer re-orders with <pad> and appends <mask> to, as for the real
    250002 pieces) beside the repo's tokenizer_config.json and special_tokens_map.json. Returns the
    vocabulary size the tokenizer will have (pieces + <pad> + <mask>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import import_protobuf

    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
                                      show_progress=False)
    unigram.train_from_iterator(_SENTENCES, trainer)
    proto = import_protobuf().ModelProto()
    for piece, score in json.loads(unigram.to_str())["model"]["vocab"]:
        entry = proto.pieces.add(piece=piece, score=score)
        entry.type = {"<unk>": entry.UNKNOWN, "<s>": entry.CONTROL, "</s>": entry.CONTROL}.get(piece, entry.NORMAL)
    proto.trainer_spec.model_type = proto.trainer_spec.UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    out.mkdir()
    (out / "sentencepiece.bpe.model").write_bytes(proto.SerializeToString())
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(resource_path("configs", "altdiffusion-m18", name), out / name)
    return len(proto.pieces) + 2
