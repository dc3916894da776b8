"""Base-model presets: real hub ids for GPU users, tiny built-locally models for CPUs and tests."""

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pea.evaluate.config import EvalDefaults, EvalModels
from pea.languages import EncoderSpec, Language, encoder_variant, pick_variant
from pea.names import name_type
from pea.resources import load_registry, lookup


# Hidden widths of the adapter per family, from the official code's MLP (train_sd_zh.py: 2048 x 2 on SD1.5;
# train_sdxl_zh.py with Chinese-CLIP: 1024 x 2 on SDXL): ~7.9 M and ~6.0 M parameters for a 1024-d student.
FAMILY_ADAPTER_HIDDEN = {"sd15": (2048, 2048), "sdxl": (1024, 1024)}


class TrainDefaults(BaseModel):
    """What a preset's training runs use unless the run says otherwise. The defaults are the official
    code's (OPPO-Mente-Lab/PEA-Diffusion train_sdxl_zh.sh: lr 1e-5, weight decay 0.1, 100 warm-up steps);
    built-locally presets (tiny, toy) train a few hundred steps and set their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    adapter_hidden: tuple[int, ...] | None = None  # None: FAMILY_ADAPTER_HIDDEN
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 100
    # Recompute the UNet's activations in backward instead of keeping them. Measured on an H100 with the real
    # architectures (benchmarks/kd_step.py --memory-batches, benchmarks/gpu_results/): a cached KD step
    # holds ~6.6 GB per sample on SDXL at 1024 px (batch 16 does not fit 80 GB), 0.87 GB with checkpointing,
    # and batch 16 checkpointed ran 11.2 samples/s against 10.3 at batch 4 without. SD1.5 at 512 px holds
    # ~1 GB per sample (batch 16: 16 GB) and checkpointing would cost it 26% of its speed, so it stays off.
    gradient_checkpointing: bool = False


class Preset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: name_type("preset name")
    family: Literal["sd15", "sdxl"]
    context_dim: int
    resolution: int
    pooled_dim: int | None = None
    model_id: str | None = None
    build: str | None = None
    student_encoder: EncoderSpec | None = None
    encoder_variants: dict[str, EncoderSpec] = {}  # built-locally presets: stand-ins of the languages' variants
    bucket_step: int = 64  # bucket sides are multiples of this: VAE factor x UNet downsampling
    translation_model: str | None = None  # tiny presets: a built-locally MT model instead of the language's
    eval_models: EvalModels = EvalModels()  # tiny presets: tiny metric models; toy: the world's judge
    train: TrainDefaults = TrainDefaults()
    eval: EvalDefaults = EvalDefaults()

    @property
    def adapter_hidden(self) -> tuple[int, ...]:
        return self.train.adapter_hidden or FAMILY_ADAPTER_HIDDEN[self.family]

    @property
    def is_built_locally(self) -> bool:
        return self.build is not None

    def student_for(self, language: Language, variant: str | None = None) -> EncoderSpec:
        """Built-locally presets bring their own students (`{lang}` in the id picks the language's own);
        real ones use the language registry's encoder. `variant` names one of the language's encoder_variants
        to use instead (a built-locally preset's stand-in of it)."""
        real = language.student_encoder if variant is None else encoder_variant(language, variant)
        if self.student_encoder is None:
            return real
        own = self.student_encoder if variant is None else pick_variant(self.encoder_variants, variant,
                                                                         f"preset {self.name!r}")
        return own.model_copy(update={"id": own.id.format(lang=language.code)})

    def translation_for(self, language: Language) -> str:
        return self.translation_model or language.translation.id


@cache
def registry() -> dict[str, Preset]:
    return load_registry("presets.yaml", Preset, "name")


def get_preset(name: str) -> Preset:
    return lookup(registry(), name, "preset")
