"""Frozen text encoders that give token states at a chosen layer (the adapter's input)."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pea.errors import PeaError
from pea.languages import EncoderSpec
from pea.models.loading import encoder_source, load_transformers_class

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
        return self.spec.hidden_size

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
        tok = self.tokenizer(
            texts, padding="max_length", max_length=window, truncation=True, return_tensors="pt"
        )
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        model_mask = mask if self.spec.use_attention_mask else None
        out = self.model(input_ids=ids, attention_mask=model_mask, output_hidden_states=True)
        layer = self.spec.hidden_layer
        states = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        if states.shape[-1] != self.spec.hidden_size:
            raise PeaError(
                f"encoder {self.spec.id!r} gives {states.shape[-1]}-d states, its spec says {self.spec.hidden_size}",
                "correct hidden_size in the language or preset entry",
            )
        return EncodedText(states=states, mask=mask, truncated=truncated)


def load_text_encoder(spec: EncoderSpec, model_cache: Path) -> TextEncoder:
    source = encoder_source(spec, model_cache)
    tokenizer_cls = load_transformers_class(spec.tokenizer)
    model_cls = load_transformers_class(spec.loader)
    try:
        tokenizer = tokenizer_cls.from_pretrained(source)
        model = model_cls.from_pretrained(source)
    except OSError as e:
        raise PeaError(
            f"cannot load text encoder {source!r}: {e}", "check the hub id or path, or your HF_HOME cache"
        ) from e
    # CLIP-style dual encoders: only the text tower is used
    model = getattr(model, "text_model", model)
    return TextEncoder(spec, tokenizer, model)
