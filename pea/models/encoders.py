"""Frozen text encoders that give token states at a chosen layer (the adapter's input)."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pea.errors import PeaError
from pea.languages import EncoderSpec
from pea.models.loading import encoder_source, load_open_clip_text, load_transformers_class, load_weights_strictly

log = logging.getLogger(__name__)


@dataclass
class EncodedText:
    states: torch.Tensor  # (B, L, D) token states
    mask: torch.Tensor  # (B, L) 1 for real tokens
    truncated: list[bool]  # prompt was longer than the encoder's window


class TextEncoder:
    """A student (or any) text encoder: tokenizer + model, frozen, with a fixed token window."""

    def __init__(self, spec: EncoderSpec, tokenizer, model):
        self.spec = spec
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return state_width(self.model, self.spec.hidden_layer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "TextEncoder":
        self.model.to(device)
        return self

    @torch.no_grad()
    def encode(self, texts: list[str]) -> EncodedText:
        window = self.spec.max_tokens
        full = self.tokenizer(texts, truncation=False)["input_ids"]
        truncated = [len(ids) > window for ids in full]
        for text, cut in zip(texts, truncated):
            if cut:
                log.warning("prompt longer than the encoder's %d-token window, truncated: %.60s...", window, text)
        # everything the tokenizer makes goes in: BERT's (Chinese-CLIP's) token_type_ids too, all 0 (one segment)
        tok = self.tokenizer(
            texts, padding="max_length", max_length=window, truncation=True, return_tensors="pt"
        ).to(self.device)
        mask = tok["attention_mask"]
        if not self.spec.use_attention_mask:
            del tok["attention_mask"]
        out = self.model(**tok, output_hidden_states=True)
        layer = self.spec.hidden_layer
        states = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return EncodedText(states=states, mask=mask, truncated=truncated)


def state_width(model, layer: int) -> int:
    """D of the (B, L, D) states at `layer`, from the loaded config. AltCLIP's last_hidden_state is the output of
    its `transformation` Linear (text_config.project_dim wide); its hidden_states, like every other encoder's
    states, are config.hidden_size wide (T5's d_model)."""
    config = model.config
    return config.project_dim if layer == -1 and hasattr(config, "project_dim") else config.hidden_size


def load_text_encoder(spec: EncoderSpec, model_cache: Path) -> TextEncoder:
    """The spec's tokenizer and model, every weight loaded from the checkpoint (else a PeaError): of a dual
    CLIP checkpoint (`loader` the class the repo holds: ChineseCLIPModel, AltCLIPModel, CLIPModel) the text tower;
    of an encoder-decoder one (mT5) the encoder (`loader` MT5EncoderModel); of an open_clip CLIP
    (`open_clip:<arch>`) the Hugging Face transformer of its text tower, whose token states come before open_clip's
    pooling and projection (the official code's mul_clip takes these `output_tokens`). The tokenizer is always a
    transformers class read from the same repo. The spec's hidden_size sized the adapter before anything was
    loaded, so the tower's real width is checked against it here, before any encoding."""
    source = encoder_source(spec, model_cache)
    tokenizer_cls = load_transformers_class(spec.tokenizer)
    library, _, arch = spec.loader.partition(":")
    try:
        tokenizer = tokenizer_cls.from_pretrained(source)
        if library == "open_clip":
            model = load_open_clip_text(arch, source, model_cache)
        else:
            model = load_weights_strictly(load_transformers_class(spec.loader), source)
    except (OSError, ValueError) as e:  # ValueError: huggingface_hub's for an id that is neither repo nor folder
        raise PeaError(
            f"cannot load text encoder {source!r}: {e}", "check the hub id or path, or your HF_HOME cache"
        ) from e
    encoder = TextEncoder(spec, tokenizer, getattr(model, "text_model", model))
    if encoder.hidden_size != spec.hidden_size:
        raise PeaError(
            f"encoder {spec.id!r} gives {encoder.hidden_size}-d states at layer {spec.hidden_layer}, "
            f"its spec says {spec.hidden_size}",
            f"set hidden_size: {encoder.hidden_size} in the language or preset entry",
        )
    return encoder
