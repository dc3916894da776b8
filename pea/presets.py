"""Base-model presets: real hub ids for GPU users, tiny built-locally models for CPUs and tests."""

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pea.evaluate.config import EvalModels
from pea.languages import EncoderSpec, Language
from pea.resources import load_registry, lookup


class Preset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    family: Literal["sd15", "sdxl"]
    context_dim: int
    resolution: int
    pooled_dim: int | None = None
    model_id: str | None = None
    build: str | None = None
    student_encoder: EncoderSpec | None = None
    bucket_step: int = 64  # bucket sides are multiples of this: VAE factor x UNet downsampling
    translation_model: str | None = None  # tiny presets: a built-locally MT model instead of the language's
    eval_models: EvalModels = EvalModels()  # tiny presets: tiny metric models; toy: the world's judge

    @property
    def is_built_locally(self) -> bool:
        return self.build is not None

    def student_for(self, language: Language) -> EncoderSpec:
        """Built-locally presets bring their own students (`{lang}` in the id picks the language's own);
        real ones use the language registry's encoder."""
        if self.student_encoder is None:
            return language.student_encoder
        return self.student_encoder.model_copy(update={"id": self.student_encoder.id.format(lang=language.code)})

    def translation_for(self, language: Language) -> str:
        return self.translation_model or language.translation.id


@cache
def registry() -> dict[str, Preset]:
    return load_registry("presets.yaml", Preset, "name")


def get_preset(name: str) -> Preset:
    return lookup(registry(), name, "preset")
