"""Prompts -> UNet conditioning, for the teacher (English, the base model's own encoders) and the student
(native language, frozen student encoder + adapter). Both give a `Conditioning`, so the KD step and the
inference pipeline never need to know which side they hold."""

import unicodedata

import torch

from pea.adapter import PEAAdapter
from pea.errors import PeaError
from pea.kd_types import Conditioning
from pea.models.encoders import TextEncoder


def is_sdxl(pipe) -> bool:
    return "text_encoder_2" in pipe.components


def null_is_zeros(pipe) -> bool:
    """SDXL conditions the unconditional branch on zeros, not on the encoded empty prompt."""
    return bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))


def _blank(prompt) -> bool:
    """Nothing to condition on: spaces and control or format characters (NUL, ESC, zero-width) only."""
    return not isinstance(prompt, str) or all(c.isspace() or unicodedata.category(c)[0] == "C" for c in prompt)


def check_prompts(prompts: list[str]) -> None:
    if not prompts or any(_blank(p) for p in prompts):
        raise PeaError("empty prompt (nothing but spaces or control characters)",
                       "give a non-empty prompt in the adapter's language")


class TeacherConditioner:
    """English prompts through the base pipeline's own encoders, exactly as diffusers encodes them
    (SDXL: penultimate states of both encoders concatenated, pooled from the second)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.zero_null = null_is_zeros(pipe)

    @property
    def device(self) -> torch.device:
        return self.pipe.text_encoder.device

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Conditioning:
        if is_sdxl(self.pipe):
            context, _, pooled, _ = self.pipe.encode_prompt(
                prompts, device=self.device, do_classifier_free_guidance=False
            )
            return Conditioning(context, pooled)
        context, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return Conditioning(context)

    def null(self, batch: int) -> Conditioning:
        cond = self([""])
        if self.zero_null:
            cond = Conditioning(torch.zeros_like(cond.context), torch.zeros_like(cond.pooled))
        return _repeat(cond, batch)


class StudentConditioner:
    """Native prompts through the frozen student encoder and the adapter."""

    def __init__(self, encoder: TextEncoder, adapter: PEAAdapter, zero_null: bool):
        self.encoder = encoder
        self.adapter = adapter
        self.zero_null = zero_null

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Conditioning:
        encoded = self.encoder.encode(prompts)
        dtype = next(self.adapter.parameters(), encoded.states).dtype
        return self.adapter(encoded.states.to(dtype), encoded.mask)

    def null(self, batch: int) -> Conditioning:
        cond = self([""]) if not self.zero_null else self._zeros()
        return _repeat(cond, batch)

    def _zeros(self) -> Conditioning:
        cfg = self.adapter.config
        device = next(self.adapter.parameters()).device
        context = torch.zeros(1, self.encoder.spec.max_tokens, cfg.context_dim, device=device)
        pooled = torch.zeros(1, cfg.pooled_dim, device=device) if cfg.pooled_dim else None
        return Conditioning(context, pooled)


def _repeat(cond: Conditioning, batch: int) -> Conditioning:
    pooled = cond.pooled.expand(batch, -1) if cond.pooled is not None else None
    return Conditioning(cond.context.expand(batch, -1, -1), pooled)
