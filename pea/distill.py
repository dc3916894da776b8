"""One knowledge-distillation step (paper Sec. 3, Eq. 1-4; hybrid training Sec. 3.4).

One frozen UNet serves teacher and student. The teacher pass (English conditioning) runs under no_grad;
the student pass (adapter conditioning) keeps a graph only through the activations, since every UNet
weight has requires_grad off: backward reaches the adapter and computes no UNet weight gradient. That is
about three UNet forwards per sample (teacher forward, student forward, student backward to the input),
against the reference code's two UNet copies with weight gradients on (see benchmarks/kd_step.py).

Semantics follow the official code (OPPO-Mente-Lab/PEA-Diffusion, train_sdxl_zh.py / train_sd_zh.py):
- noise and targets from a DDPM scheduler (`training_scheduler`), whatever sampler the pipeline ships;
- CFG dropout swaps the context of both sides for the encoded empty prompt (the student's through the
  adapter), keeping each side's pooled embedding;
- every loss term is masked per sample (SD loss: culture samples; KD terms: parallel samples) and averaged
  over the whole batch, so a sample weighs the same whatever the batch's mix; feature KD weighs 0.1.
The paper's Table 2 ablation rows are named configurations in `ABLATIONS`.
"""

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pea.adapter import masked_mean
from pea.errors import PeaError
from pea.kd_types import Conditioning, KDBatch, NullConditioning

Block = Literal["down", "mid", "up"]


class KDConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    output_kd: float = Field(1.0, ge=0)  # lambda_L, Eq. 2: student vs teacher prediction
    feature_kd: float = Field(0.1, ge=0)  # lambda_FL, Eq. 3: hooked UNet block outputs (0.1 in the official code)
    sd: float = Field(1.0, ge=0)  # Eq. 1: prediction vs the diffusion target (culture samples)
    text_kd: float = Field(0.0, ge=0)  # TKD: adapter output vs the teacher's text embedding
    sd_on_parallel: bool = False  # True for the ablation rows: "finetuning w/ ..." on every sample
    feature_blocks: tuple[Block, ...] = ("down", "mid", "up")
    cfg_dropout: float = Field(0.1, ge=0, le=1)  # context replaced by the encoded empty prompt, both sides
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
    "ufkd": KDConfig(output_kd=0, sd_on_parallel=True),
    "utkd": KDConfig(text_kd=1, sd_on_parallel=True),
    "ukd": KDConfig(sd_on_parallel=True),
}


@dataclass
class Noised:
    """The forward diffusion of one batch: noise and noisy latents (B, 4, h, w), timesteps (B,)."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor


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
        # a compressed student (pea.compress) may have no mid block: its down and up blocks are hooked alone
        mid = [unet.mid_block] if unet.mid_block is not None else []
        modules = {"down": list(unet.down_blocks), "mid": mid, "up": list(unet.up_blocks)}
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


def training_scheduler(scheduler_config):
    """The DDPM forward process of the base model's noise schedule (as diffusers' own training scripts build it).

    Pipelines ship a sampler: SDXL, SSD-1B and sdxl-turbo an Euler one, whose `add_noise` returns x0 + sigma*eps
    (sigma ~14.6 at t=999) for inputs that its `scale_model_input` rescales at sampling time; the UNet was trained
    on sqrt(a)*x0 + sqrt(1-a)*eps. Betas, timesteps and prediction type come from the config.
    """
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(dict(scheduler_config))


def diffusion_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise PeaError(f"unsupported prediction_type {kind!r} in the scheduler config", "use epsilon or v_prediction")


def add_noise(scheduler, latents: torch.Tensor, cfg: KDConfig, generator) -> Noised:
    """Uniform timesteps and Gaussian noise (plus offset noise if configured) through the DDPM scheduler."""
    from diffusers import DDPMScheduler

    if not isinstance(scheduler, DDPMScheduler):
        raise TypeError(f"training noise needs a DDPMScheduler (see training_scheduler), got {type(scheduler).__name__}")
    B, device = latents.shape[0], latents.device
    rand = dict(generator=generator, device=device)
    noise = torch.randn(latents.shape, **rand, dtype=latents.dtype)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((B, latents.shape[1], 1, 1), **rand, dtype=latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (B,), **rand)
    return Noised(noise, timesteps, scheduler.add_noise(latents, noise, timesteps))


def dropout_rows(batch_size: int, p: float, generator, device) -> torch.Tensor:
    """(B,) bool: the rows whose context is swapped for the empty prompt's (classifier-free guidance training)."""
    return torch.rand(batch_size, generator=generator, device=device) < p


def _swap_context(drop: torch.Tensor, null_context: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return torch.where(drop.view(-1, 1, 1), null_context.expand_as(context).to(context.dtype), context)


def student_conditioning(adapter, batch: KDBatch, null: NullConditioning, drop: torch.Tensor) -> Conditioning:
    """The adapter runs once on the batch's states with the empty prompt's appended ((B+1, Ls, D)), so a
    DDP-wrapped adapter sees one forward per step and its gradient hooks fire once."""
    states = torch.cat([batch.student_states, null.student_states.to(batch.student_states.dtype)])
    mask = torch.cat([batch.student_mask, null.student_mask.to(batch.student_mask.dtype)])
    out = adapter(states, mask)
    context = _swap_context(drop, out.context[-1:], out.context[:-1])
    return Conditioning(context, out.pooled[:-1] if out.pooled is not None else None)


def teacher_conditioning(batch: KDBatch, null: NullConditioning, drop: torch.Tensor) -> Conditioning:
    return Conditioning(_swap_context(drop, null.teacher_context, batch.teacher_context), batch.teacher_pooled)


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) x2 -> (B,): the mean squared error of each sample, in fp32."""
    return F.mse_loss(a.float(), b.float(), reduction="none").flatten(1).mean(1)


def _batch_mean(per_sample: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Sum over the samples a term applies to, divided by the whole batch: the official per-sample mask."""
    return per_sample.sum() / batch_size


def kd_terms(unet, teacher_unet, batch, student, teacher, noised, scheduler, cfg) -> dict[str, torch.Tensor]:
    """The loss terms of Eq. 1-3 (and TKD), each masked per sample and averaged over the whole batch."""
    B = batch.latents.shape[0]
    culture = batch.culture.to(device=batch.latents.device, dtype=torch.bool)
    kd_idx = (~culture).nonzero().flatten()
    sd_rows = torch.ones_like(culture) if cfg.sd_on_parallel else culture
    features = cfg.feature_kd > 0
    pred, s_feats = unet(noised.noisy, noised.timesteps, student, batch.time_ids, features=features)
    terms: dict[str, torch.Tensor] = {}
    if cfg.needs_teacher and len(kd_idx):
        t_cond = Conditioning(teacher.context[kd_idx], teacher.pooled[kd_idx] if teacher.pooled is not None else None)
        t_time_ids = batch.time_ids[kd_idx] if batch.time_ids is not None else None
        with torch.no_grad():  # the teacher runs on the parallel rows only: they are the only ones KD weighs
            t_pred, t_feats = teacher_unet(noised.noisy[kd_idx], noised.timesteps[kd_idx], t_cond, t_time_ids, features)
        terms["output_kd"] = _batch_mean(per_sample_mse(pred[kd_idx], t_pred), B)
        if features:
            terms["feature_kd"] = sum(_batch_mean(per_sample_mse(s[kd_idx], t), B) for s, t in zip(s_feats, t_feats))
    if cfg.sd > 0 and sd_rows.any():
        target = diffusion_target(scheduler, batch.latents, noised.noise, noised.timesteps)
        terms["sd"] = _batch_mean(per_sample_mse(pred, target)[sd_rows], B)
    if cfg.text_kd > 0 and len(kd_idx):
        terms["text_kd"] = _batch_mean(_text_kd(student, teacher, batch.student_mask, kd_idx), B)
    return terms


def _text_kd(student: Conditioning, teacher: Conditioning, mask, idx) -> torch.Tensor:
    """(len(idx),): mean-pooled student vs teacher token states (the token counts differ), plus pooled on SDXL."""
    s_mean = masked_mean(student.context[idx], mask[idx])
    per_sample = per_sample_mse(s_mean, teacher.context[idx].mean(1))
    if student.pooled is not None:
        per_sample = per_sample + per_sample_mse(student.pooled[idx], teacher.pooled[idx])
    return per_sample


def kd_step(
    unet: HookedUNet,
    adapter,
    scheduler,
    batch: KDBatch,
    null: NullConditioning,
    cfg: KDConfig,
    generator: torch.Generator | None = None,
    step: int = 0,
    teacher_unet: HookedUNet | None = None,
) -> KDResult:
    """Loss of one batch; call .backward() on `loss`. Raises NonFiniteLossError naming step and samples.

    `scheduler` is the DDPM training scheduler (`training_scheduler`). `adapter` may be DDP-wrapped: it is
    called once. `teacher_unet` defaults to `unet` itself (one frozen UNet for both sides); a separate copy is
    only for comparisons such as the reference way in benchmarks/kd_step.py.
    """
    noised = add_noise(scheduler, batch.latents, cfg, generator)
    drop = dropout_rows(batch.latents.shape[0], cfg.cfg_dropout, generator, batch.latents.device)
    student = student_conditioning(adapter, batch, null, drop)
    teacher = teacher_conditioning(batch, null, drop)
    terms = kd_terms(unet, teacher_unet or unet, batch, student, teacher, noised, scheduler, cfg)
    weights = {"output_kd": cfg.output_kd, "feature_kd": cfg.feature_kd, "sd": cfg.sd, "text_kd": cfg.text_kd}
    loss = sum((weights[k] * v for k, v in terms.items()), batch.latents.new_zeros(()))
    values = {k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())}
    if not torch.isfinite(loss):
        raise NonFiniteLossError(step, batch.keys, values)
    return KDResult(loss=loss, terms=values)
