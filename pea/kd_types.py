"""The inputs of the UNet and of one KD step, shared by the data stages (which build them), the KD step
(which consumes them) and inference (which hands Conditioning to diffusers pipelines)."""

from dataclasses import dataclass, fields

import torch


@dataclass
class Conditioning:
    """What the UNet is conditioned on: (B, L, context_dim) tokens and, for SDXL, a (B, pooled_dim) vector."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass
class KDBatch:
    """Cached features of B samples. Shapes: latents (B, 4, h, w), already scaled by the VAE factor;
    teacher_context (B, Lt, C); teacher_pooled (B, P) or None; student_states (B, Ls, D);
    student_mask (B, Ls); culture (B,) bool; time_ids (B, 6) for SDXL (orig h, w, crop top, left, target h, w)."""

    latents: torch.Tensor
    teacher_context: torch.Tensor
    teacher_pooled: torch.Tensor | None
    student_states: torch.Tensor
    student_mask: torch.Tensor
    culture: torch.Tensor
    time_ids: torch.Tensor | None
    keys: list[str]

    def to(self, device, dtype=None) -> "KDBatch":
        def move(x):
            if not isinstance(x, torch.Tensor):
                return x
            return x.to(device, dtype) if (dtype is not None and x.is_floating_point()) else x.to(device)

        return KDBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


@dataclass
class NullConditioning:
    """The encoded empty prompt on both sides, for CFG dropout in training: teacher_context (1, Lt, C) from the
    base model's own encoders (the encoded "", also on SDXL, whose pipelines use zeros at inference: zeros on
    both sides would make every dropped row's KD zero and give no gradient); student_states (1, Ls, D) and
    student_mask (1, Ls) from the student encoder, mapped by the adapter inside the step."""

    teacher_context: torch.Tensor
    student_states: torch.Tensor
    student_mask: torch.Tensor

    def to(self, device) -> "NullConditioning":
        return NullConditioning(*(getattr(self, f.name).to(device) for f in fields(self)))
