"""The frozen VAE and text encoders turned into KD inputs.

The cache stage stores each sample's latent distribution (the VAE encoder's mean and std, ~64 KB at 512 px in
fp16) and, as an option, its text embeddings; training samples a latent from the distribution every time it
sees the sample, as diffusers' own training scripts do (`latent_dist.sample()`), and encodes the captions
online: the text encoders cost ~2% of a step's FLOPs, while their outputs would be ~85% of the cache's bytes.
The online path (no cache) runs all of it every step.
"""

from dataclasses import dataclass

import torch

from pea.conditioning import TeacherConditioner, is_sdxl
from pea.kd_types import KDBatch, NullConditioning
from pea.models.encoders import TextEncoder
from pea.models.loading import freeze

TEXT_KEYS = ("teacher_context", "teacher_pooled", "student_states", "student_mask")


def default_time_ids(batch: int, height: int, width: int, device=None) -> torch.Tensor:
    """SDXL micro-conditioning for an uncropped image: original size, crop (0, 0), target size."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device).repeat(batch, 1)


@dataclass
class LatentDistribution:
    """The VAE encoder's diagonal Gaussian of B images, both already times the VAE's scaling factor:
    mean and std (B, 4, h, w). A training latent is mean + std * noise, drawn anew at every visit."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise


@torch.no_grad()
def latent_distribution(vae, images: torch.Tensor) -> LatentDistribution:
    """images (B, 3, H, W) in [-1, 1] -> their scaled latent distribution (B, 4, H/8, W/8)."""
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    scale = vae.config.scaling_factor
    return LatentDistribution(dist.mean * scale, dist.std * scale)


class TextFeatures:
    """English captions through the base model's own encoders and native ones through the frozen student."""

    def __init__(self, pipe, student: TextEncoder):
        self.sdxl = is_sdxl(pipe)
        self.teacher = TeacherConditioner(freeze(pipe))
        self.student = student

    @torch.no_grad()
    def __call__(self, english: list[str], native: list[str]) -> dict[str, torch.Tensor | None]:
        """The TEXT_KEYS of B samples: (B, Lt, C), (B, P) or None, (B, Ls, D), (B, Ls). Culture samples may
        have an empty English caption."""
        teacher = self.teacher([e or "" for e in english])
        student = self.student.encode(native)
        return {"teacher_context": teacher.context, "teacher_pooled": teacher.pooled,
                "student_states": student.states, "student_mask": student.mask}

    def null(self) -> NullConditioning:
        """The encoded empty prompt on both sides (never SDXL's inference-time zeros: see NullConditioning)."""
        empty = self.student.encode([""])
        return NullConditioning(
            teacher_context=self.teacher([""]).context, student_states=empty.states, student_mask=empty.mask
        )


def kd_batch(latents: torch.Tensor, text: dict, culture: torch.Tensor, time_ids: torch.Tensor | None,
             keys: list[str], sdxl: bool) -> KDBatch:
    """A KD step's inputs from sampled latents (B, 4, h, w) and the TEXT_KEYS; time_ids (B, 6) kept on SDXL."""
    return KDBatch(latents=latents, **{k: text[k] for k in TEXT_KEYS}, culture=culture.bool(),
                   time_ids=time_ids if sdxl else None, keys=keys)


class FeatureExtractor:
    """The online path: images and captions -> a KDBatch, every step."""

    def __init__(self, pipe, student: TextEncoder):
        self.pipe = freeze(pipe)
        self.text = TextFeatures(pipe, student)

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        english: list[str],
        native: list[str],
        culture: torch.Tensor,
        time_ids: torch.Tensor | None = None,
        keys: list[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> KDBatch:
        """images (B, 3, H, W) in [-1, 1]; culture samples may have an empty English caption."""
        latents = latent_distribution(self.pipe.vae, images).sample(generator)
        if self.text.sdxl and time_ids is None:
            time_ids = default_time_ids(len(native), images.shape[-2], images.shape[-1], latents.device)
        return kd_batch(latents, self.text(english, native), culture, time_ids,
                        keys or [str(i) for i in range(len(native))], self.text.sdxl)

    def null(self) -> NullConditioning:
        return self.text.null()
