"""Distilling a block-removed student UNet from its frozen teacher (BK-SDM, arXiv 2305.15798, Sec. 3.2).

The objective is BK-SDM's training script's (Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py, read at
commit fe4cb338fc9acb40e554af39885c0ee865180e24):
    loss = lambda_sd * MSE(student pred, diffusion target)            (loss_sd, the denoising task loss)
         + lambda_kd_output * MSE(student pred, teacher pred)         (loss_kd_output)
         + lambda_kd_feat * sum over mapped blocks of MSE(student block output, teacher block output)
with every lambda 1.0 by default and every MSE F.mse_loss(..., reduction="mean") over the whole tensor in fp32:
the feature term is the SUM of per-block means, not their mean. Block outputs are caught by forward hooks;
a tuple output (down blocks: (hidden_states, skip states)) counts by its first element. Their `mapping_layers`
are the down and up blocks only (bk_base and bk_small: down_blocks.0-3, up_blocks.0-3; no mid_block, even for
bk_base, whose student keeps it); for bk_tiny, which removes the innermost level, student up block i is
paired with teacher up block i + 1, and the last kept down stage (which in the student has no downsampler, so
its block output is 2x larger than the teacher's) by its last attention's proj_out on both sides.
okotaku/diffengine's DistillSDXL (diffengine/models/editors/distill_sd/distill_sd_xl.py) also pairs the mid
blocks when the student keeps one: `feature_blocks=("down", "mid", "up")` gives that.

Both UNets see the same English conditioning (the cached teacher context; pooled + time ids on SDXL), the same
noisy latents and timesteps, drawn by pea's training scheduler as in pea.distill.kd_step; the teacher runs
under no_grad. BK-SDM trains with no classifier-free-guidance dropout; `cfg_dropout` > 0 swaps dropped rows'
context for the encoded empty prompt on both sides, as pea's KD step does.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pea.distill import (
    Block,
    KDResult,
    NonFiniteLossError,
    add_noise,
    diffusion_target,
    dropout_rows,
    teacher_conditioning,
)
from pea.errors import PeaError
from pea.kd_types import Conditioning, KDBatch, NullConditioning

BK_SDM_BLOCKS: tuple[Block, ...] = ("down", "up")  # BK-SDM's mapping_layers: no mid_block


class CompressLosses(BaseModel):
    """The weights of BK-SDM's three terms (its argparse defaults) and which blocks the feature term pairs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sd: float = Field(1.0, ge=0)  # --lambda_sd: student prediction vs the diffusion target
    output_kd: float = Field(1.0, ge=0)  # --lambda_kd_output: student vs teacher prediction
    feature_kd: float = Field(1.0, ge=0)  # --lambda_kd_feat: paired block outputs, summed over blocks
    feature_blocks: tuple[Block, ...] = BK_SDM_BLOCKS
    cfg_dropout: float = Field(0.0, ge=0, le=1)  # BK-SDM: none
    noise_offset: float = Field(0.0, ge=0)  # read by pea.distill.add_noise


@dataclass
class CompressResult(KDResult):
    """`loss` to backward; `terms` the weighted parts' raw values (sd, output_kd, feature_kd) and the total as
    floats, as pea's KD step logs them; `features` each paired block's MSE by the student's module name."""

    features: dict[str, float] = field(default_factory=dict)


def _unwrapped(unet):
    return getattr(unet, "module", unet)  # a DDP-wrapped student: hooks go on the module itself


def _last_layer(block) -> str:
    """The module whose output is a down stage's last layer before its downsampler: its last attention's
    proj_out (BK-SDM's bk_tiny choice), or its last resnet for a stage without attention."""
    attentions = getattr(block, "attentions", None)
    return f"attentions.{len(attentions) - 1}.proj_out" if attentions else f"resnets.{len(block.resnets) - 1}"


def feature_pairs(student, teacher, blocks: tuple[Block, ...] = BK_SDM_BLOCKS) -> list[tuple[str, str]]:
    """(student module name, teacher module name) of every block output the feature term compares, derived
    from the student's own modules: down stage i with the teacher's i, the mid blocks if both have one, up
    stage i with the teacher's i + (levels the student removed). A down stage that lost its downsampler (the
    student's last, when levels were removed) is compared by its last layer, as BK-SDM's bk_tiny mapping is."""
    student, teacher = _unwrapped(student), _unwrapped(teacher)
    pairs = []
    if "down" in blocks:
        for i, block in enumerate(student.down_blocks):
            theirs = teacher.down_blocks[i]
            if block.downsamplers is None and theirs.downsamplers is not None:
                pairs.append((f"down_blocks.{i}.{_last_layer(block)}", f"down_blocks.{i}.{_last_layer(theirs)}"))
            else:
                pairs.append((f"down_blocks.{i}", f"down_blocks.{i}"))
    if "mid" in blocks and student.mid_block is not None and teacher.mid_block is not None:
        pairs.append(("mid_block", "mid_block"))
    if "up" in blocks:
        offset = len(teacher.up_blocks) - len(student.up_blocks)
        pairs += [(f"up_blocks.{i}", f"up_blocks.{i + offset}") for i in range(len(student.up_blocks))]
    return pairs


class FeatureTaps:
    """Forward hooks on both UNets' paired modules, registered once (built before the student is DDP-wrapped
    or after: they go on the unwrapped modules). They record only inside `capture()`, so the recomputation
    that gradient checkpointing runs during backward records nothing."""

    def __init__(self, student, teacher, blocks: tuple[Block, ...] = BK_SDM_BLOCKS):
        self.pairs = feature_pairs(student, teacher, blocks)
        self._outputs: dict[str, dict[str, torch.Tensor]] | None = None
        self._handles = []
        for side, unet in (("student", _unwrapped(student)), ("teacher", _unwrapped(teacher))):
            for s_name, t_name in self.pairs:
                module = unet.get_submodule(s_name if side == "student" else t_name)
                self._handles.append(module.register_forward_hook(partial(self._record, side, s_name)))

    def _record(self, side: str, key: str, module, args, output) -> None:
        if self._outputs is not None:
            self._outputs[side][key] = output[0] if isinstance(output, tuple) else output

    @contextmanager
    def capture(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        """{"student": {name: output}, "teacher": {name: output}}, filled by the forwards run inside."""
        self._outputs = {"student": {}, "teacher": {}}
        try:
            yield self._outputs
        finally:
            self._outputs = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _predict(unet, noisy, timesteps, cond: Conditioning, time_ids) -> torch.Tensor:
    """(B, 4, h, w) prediction; SDXL's UNet also takes the pooled text (B, P) and the size/crop ids (B, 6)."""
    added = {"text_embeds": cond.pooled, "time_ids": time_ids} if cond.pooled is not None else None
    return unet(noisy, timesteps, encoder_hidden_states=cond.context, added_cond_kwargs=added).sample


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """BK-SDM's F.mse_loss(a.float(), b.float(), reduction="mean"): one mean over every element."""
    if a.shape != b.shape:
        raise PeaError(f"student and teacher outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}",
                       "pair only blocks of the same resolution and width (see feature_pairs)")
    return F.mse_loss(a.float(), b.float())


Terms = dict[str, torch.Tensor]


def compress_terms(student_pred, teacher_pred, target, outputs) -> tuple[Terms, Terms]:
    """The three BK-SDM terms from the predictions (B, 4, h, w) and the captured block outputs, plus the
    per-block feature MSEs whose sum is `feature_kd`."""
    teacher_feats = outputs["teacher"]
    features = {name: _mse(s, teacher_feats[name].detach()) for name, s in outputs["student"].items()}
    terms = {"sd": _mse(student_pred, target), "output_kd": _mse(student_pred, teacher_pred.detach()),
             "feature_kd": sum(features.values(), student_pred.new_zeros((), dtype=torch.float32))}
    return terms, features


def compress_step(
    student,
    teacher,
    batch: KDBatch,
    scheduler,
    taps: FeatureTaps,
    cfg: CompressLosses | None = None,
    null: NullConditioning | None = None,
    generator: torch.Generator | None = None,
    step: int = 0,
) -> CompressResult:
    """Loss of one batch of cached latents (B, 4, h, w) and English conditioning (teacher_context (B, L, C),
    teacher_pooled (B, P) and time_ids (B, 6) on SDXL; the student_* fields go unused); call .backward() on
    `loss`. `student` may be DDP-wrapped: it is called once. `scheduler` is pea.distill.training_scheduler's
    DDPM scheduler; noise, timesteps and CFG-dropout rows are drawn from `generator` in kd_step's order.
    `taps` hooks these two UNets (FeatureTaps(student, teacher, cfg.feature_blocks)). Raises
    NonFiniteLossError naming the step and the batch's samples. `cfg` defaults to BK-SDM's weights."""
    cfg = cfg or CompressLosses()
    if cfg.cfg_dropout > 0 and null is None:
        raise ValueError("cfg_dropout > 0 needs the null conditioning (the encoded empty prompt)")
    noised = add_noise(scheduler, batch.latents, cfg, generator)  # reads only cfg.noise_offset
    drop = dropout_rows(batch.latents.shape[0], cfg.cfg_dropout, generator, batch.latents.device)
    cond = (teacher_conditioning(batch, null, drop) if null is not None
            else Conditioning(batch.teacher_context, batch.teacher_pooled))
    with taps.capture() as outputs:
        pred = _predict(student, noised.noisy, noised.timesteps, cond, batch.time_ids)
        with torch.no_grad():
            teacher_pred = _predict(teacher, noised.noisy, noised.timesteps, cond, batch.time_ids)
    target = diffusion_target(scheduler, batch.latents, noised.noise, noised.timesteps)
    terms, features = compress_terms(pred, teacher_pred, target, outputs)
    loss = cfg.sd * terms["sd"] + cfg.output_kd * terms["output_kd"] + cfg.feature_kd * terms["feature_kd"]
    values = {k: float(v.detach()) for k, v in terms.items()} | {"loss": float(loss.detach())}
    if not torch.isfinite(loss):
        raise NonFiniteLossError(step, batch.keys, values)
    return CompressResult(loss=loss, terms=values, features={k: float(v.detach()) for k, v in features.items()})


def trainable_student(unet, gradient_checkpointing: bool = False):
    """`unet` set up for training in place (and returned): every parameter trainable and in fp32 (diffusers'
    cast_training_params: AdamW on bf16 weights loses updates below their rounding step; the forward runs in
    bf16 under the engine's autocast on a GPU), train mode, and diffusers' gradient checkpointing when asked
    (recomputes each resnet's activations in backward: less GPU memory for about one more forward)."""
    from diffusers.training_utils import cast_training_params

    unet.requires_grad_(True)
    cast_training_params(unet, dtype=torch.float32)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet.train()


def frozen_teacher(unet):
    """`unet` frozen in place (and returned): no parameter takes a gradient, eval mode."""
    return unet.requires_grad_(False).eval()
