"""The frozen VAE and text encoders turned into KD inputs.

The cache stage runs this once per sample and stores the result beside it, so training never runs them;
the online path (no cache) runs it every step.
"""

import torch

from pea.conditioning import TeacherConditioner, is_sdxl
from pea.kd_types import KDBatch, NullConditioning
from pea.models.encoders import TextEncoder
from pea.models.loading import freeze


def default_time_ids(batch: int, height: int, width: int, device=None) -> torch.Tensor:
    """SDXL micro-conditioning for an uncropped image: original size, crop (0, 0), target size."""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32, device=device).repeat(batch, 1)


class FeatureExtractor:
    def __init__(self, pipe, student: TextEncoder):
        self.pipe = freeze(pipe)
        self.teacher = TeacherConditioner(pipe)
        self.student = student

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
        vae = self.pipe.vae
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.sample(generator)
        latents = latents * vae.config.scaling_factor
        teacher = self.teacher([e or "" for e in english])
        student = self.student.encode(native)
        if is_sdxl(self.pipe) and time_ids is None:
            time_ids = default_time_ids(len(native), images.shape[-2], images.shape[-1], latents.device)
        return KDBatch(
            latents=latents,
            teacher_context=teacher.context,
            teacher_pooled=teacher.pooled,
            student_states=student.states,
            student_mask=student.mask,
            culture=culture.bool(),
            time_ids=time_ids if is_sdxl(self.pipe) else None,
            keys=keys or [str(i) for i in range(len(native))],
        )

    def null(self) -> NullConditioning:
        """The encoded empty prompt on both sides (never SDXL's inference-time zeros: see NullConditioning)."""
        empty = self.student.encode([""])
        return NullConditioning(
            teacher_context=self.teacher([""]).context, student_states=empty.states, student_mask=empty.mask
        )
