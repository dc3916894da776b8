"""One knowledge-distillation step (paper Sec. 3, Eq. 1-4; hybrid training Sec. 3.4).

One frozen UNet serves teacher and student. The teacher pass (English conditioning) runs under no_grad;
the student pass (adapter conditioning) keeps a graph only through the activations, since every UNet
weight has requires_grad off: backward reaches the adapter and computes no UNet weight gradient. That is
about three UNet forwards per sample (teacher forward, student forward, student backward to the input),
against the reference code's two UNet copies with weight gradients on (see benchmarks/kd_step.py).

Parallel samples (both captions) get KD terms only; culture samples (native only) get the SD loss only.
The paper's Table 2 ablation rows are named configurations in `ABLATIONS`.
"""

from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pea.adapter import Conditioning, PEAAdapter, masked_mean
from pea.errors import PeaError

Block = Literal["down", "mid", "up"]


class KDConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    output_kd: float = Field(1.0, ge=0)  # lambda_L, Eq. 2: student vs teacher prediction
    feature_kd: float = Field(1.0, ge=0)  # lambda_FL, Eq. 3: hooked UNet block outputs
    sd: float = Field(1.0, ge=0)  # Eq. 1: prediction vs the diffusion target (culture samples)
    text_kd: float = Field(0.0, ge=0)  # TKD: adapter output vs the teacher's text embedding
    sd_on_parallel: bool = False  # True for the ablation rows: "finetuning w/ ..." on every sample
    feature_blocks: tuple[Block, ...] = ("down", "mid", "up")
    cfg_dropout: float = Field(0.1, ge=0, le=1)  # condition replaced by the null one, both sides
    noise_offset: float = Field(0.0, ge=0)

    @property
    def needs_teacher(self) -> bool:
        return self.output_kd > 0 or self.feature_kd > 0


# Paper Table 2. "pea" is the full method with hybrid training; the rest are its ablation rows, each
# finetuning (SD loss on every sample) plus the named distillation.
ABLATIONS: dict[str, KDConfig] = {
    "pea": KDConfig(),
    "finetune": KDConfig(output_kd=0, feature_kd=0, sd_on_parallel=True),
    "tkd": KDConfig(output_kd=0, feature_kd=0, text_kd=1, sd_on_parallel=True),
    "ulkd": KDConfig(output_kd=1, feature_kd=0, sd_on_parallel=True),
    "ufkd": KDConfig(output_kd=0, feature_kd=1, sd_on_parallel=True),
    "utkd": KDConfig(output_kd=1, feature_kd=1, text_kd=1, sd_on_parallel=True),
    "ukd": KDConfig(output_kd=1, feature_kd=1, sd_on_parallel=True),
}


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
    """The unconditional inputs used for CFG dropout: the teacher's null conditioning and the student's
    encoded empty prompt (or zeros on both sides when the base model uses zeros, as SDXL does)."""

    teacher: Conditioning  # (1, Lt, C), (1, P)
    student_states: torch.Tensor  # (1, Ls, D)
    student_mask: torch.Tensor  # (1, Ls)
    zeros: bool


@dataclass
class KDResult:
    loss: torch.Tensor
    terms: dict[str, float]


class NonFiniteLossError(PeaError):
    def __init__(self, step: int, keys: list[str], terms: dict[str, float]):
        bad = ", ".join(f"{k}={v}" for k, v in terms.items() if not torch.isfinite(torch.tensor(v)))
        super().__init__(
            f"non-finite loss at step {step} ({bad}); samples: {', '.join(keys[:8])}",
            "inspect those samples, lower the learning rate, or let training skip such batches",
        )
        self.step, self.keys, self.terms = step, keys, terms

    def __reduce__(self):
        return (NonFiniteLossError, (self.step, self.keys, self.terms))


class HookedUNet:
    """The frozen UNet behind one interface for both sides: prediction plus the hooked block outputs."""

    def __init__(self, unet, blocks: tuple[Block, ...] = ("down", "mid", "up")):
        self.unet = unet.requires_grad_(False)
        self._captured: list[torch.Tensor] | None = None
        modules = {"down": list(unet.down_blocks), "mid": [unet.mid_block], "up": list(unet.up_blocks)}
        for block in blocks:
            for module in modules[block]:
                module.register_forward_hook(self._capture)

    def _capture(self, module, args, output):
        if self._captured is not None:
            self._captured.append(output[0] if isinstance(output, tuple) else output)

    def __call__(
        self, noisy, timesteps, cond: Conditioning, time_ids, features: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        added = None
        if cond.pooled is not None:
            added = {"text_embeds": cond.pooled, "time_ids": time_ids}
        self._captured = [] if features else None
        try:
            pred = self.unet(noisy, timesteps, encoder_hidden_states=cond.context, added_cond_kwargs=added).sample
            return pred, self._captured or []
        finally:
            self._captured = None


def _select(cond: Conditioning, idx: torch.Tensor) -> Conditioning:
    return Conditioning(cond.context[idx], cond.pooled[idx] if cond.pooled is not None else None)


def _where(drop: torch.Tensor, null: torch.Tensor | None, x: torch.Tensor | None):
    if x is None:
        return None
    return torch.where(drop.view(-1, *[1] * (x.dim() - 1)), null.expand_as(x).to(x.dtype), x)


def diffusion_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise PeaError(f"unsupported prediction_type {kind!r} in the scheduler config", "use epsilon or v_prediction")


def kd_step(
    unet: HookedUNet,
    adapter: PEAAdapter,
    scheduler,
    batch: KDBatch,
    null: NullConditioning,
    cfg: KDConfig,
    generator: torch.Generator | None = None,
    step: int = 0,
    teacher_unet: HookedUNet | None = None,
) -> KDResult:
    """Loss of one batch; call .backward() on `loss`. Raises NonFiniteLossError naming step and samples.

    `teacher_unet` defaults to `unet` itself (one frozen UNet for both sides); a separate copy is only for
    comparisons such as the reference way in benchmarks/kd_step.py.
    """
    teacher_unet = teacher_unet or unet
    latents = batch.latents
    B, device = latents.shape[0], latents.device
    rand = dict(generator=generator, device=device)
    noise = torch.randn(latents.shape, **rand, dtype=latents.dtype)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((B, latents.shape[1], 1, 1), **rand, dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (B,), **rand)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    drop = torch.rand(B, **rand) < cfg.cfg_dropout

    student = adapter(batch.student_states, batch.student_mask)
    if null.zeros:
        s_null = Conditioning(torch.zeros_like(student.context[:1]), None)
        if student.pooled is not None:
            s_null.pooled = torch.zeros_like(student.pooled[:1])
    else:
        s_null = adapter(null.student_states, null.student_mask)
    student = Conditioning(_where(drop, s_null.context, student.context), _where(drop, s_null.pooled, student.pooled))
    teacher = Conditioning(
        _where(drop, null.teacher.context, batch.teacher_context),
        _where(drop, null.teacher.pooled, batch.teacher_pooled),
    )

    culture = batch.culture.to(device=device, dtype=torch.bool)
    kd_idx = (~culture).nonzero().flatten()
    sd_idx = torch.arange(B, device=device) if cfg.sd_on_parallel else culture.nonzero().flatten()
    terms: dict[str, torch.Tensor] = {}
    zero = latents.new_zeros(())

    pred, s_feats = unet(noisy, timesteps, student, batch.time_ids, features=cfg.feature_kd > 0)
    if cfg.needs_teacher and len(kd_idx):
        t_time_ids = batch.time_ids[kd_idx] if batch.time_ids is not None else None
        with torch.no_grad():
            t_pred, t_feats = teacher_unet(
                noisy[kd_idx], timesteps[kd_idx], _select(teacher, kd_idx), t_time_ids, features=cfg.feature_kd > 0
            )
        terms["output_kd"] = F.mse_loss(pred[kd_idx].float(), t_pred.float())
        if cfg.feature_kd > 0:
            terms["feature_kd"] = sum(
                (F.mse_loss(s[kd_idx].float(), t.float()) for s, t in zip(s_feats, t_feats)), zero
            )
    if cfg.sd > 0 and len(sd_idx):
        target = diffusion_target(scheduler, latents, noise, timesteps)
        terms["sd"] = F.mse_loss(pred[sd_idx].float(), target[sd_idx].float())
    if cfg.text_kd > 0 and len(kd_idx):
        s_mean = masked_mean(student.context[kd_idx], batch.student_mask[kd_idx])
        terms["text_kd"] = F.mse_loss(s_mean.float(), teacher.context[kd_idx].mean(1).float())
        if student.pooled is not None:
            terms["text_kd"] = terms["text_kd"] + F.mse_loss(student.pooled[kd_idx].float(), teacher.pooled[kd_idx].float())

    weights = {"output_kd": cfg.output_kd, "feature_kd": cfg.feature_kd, "sd": cfg.sd, "text_kd": cfg.text_kd}
    loss = sum((weights[k] * v for k, v in terms.items()), zero)
    values = {k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())}
    if not torch.isfinite(loss):
        raise NonFiniteLossError(step, batch.keys, values)
    return KDResult(loss=loss, terms=values)
