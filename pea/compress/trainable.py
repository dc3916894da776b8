"""What a compression job (TrainConfig method `compress`) trains with, built on a Ray Train worker from the
frozen UNet the worker loaded: the recipe's student (trainable, fp32 weights), the teacher frozen, and forward
hooks on both for the feature term. pea.train.loop runs it through the same micro-step, optimizer step,
checkpoints and DDP wrapper as an adapter; pea.compress.distill.compress_step is its loss."""

from dataclasses import dataclass

from pea.compress.distill import CompressLosses, FeatureTaps, frozen_teacher, trainable_student
from pea.compress.recipes import get_recipe
from pea.compress.student import make_student


@dataclass
class Compression:
    """The step's other inputs: the frozen teacher UNet, the taps on teacher and student, the loss weights."""

    teacher: object
    taps: FeatureTaps
    losses: CompressLosses


def compression(teacher_unet, recipe: str, losses: CompressLosses, gradient_checkpointing: bool):
    """(student, Compression): `recipe`'s student copied from `teacher_unet` (on its device), set up to train,
    and the teacher frozen in place. The taps go on the unwrapped student, so DDP may wrap it afterwards."""
    student = trainable_student(make_student(teacher_unet, get_recipe(recipe)), gradient_checkpointing)
    teacher = frozen_teacher(teacher_unet)
    return student, Compression(teacher, FeatureTaps(student, teacher, losses.feature_blocks), losses)
