"""The language registry: which encoder, CLIP, translation model and buckets each language uses."""

from functools import cache

from pydantic import BaseModel, ConfigDict

from pea.errors import PeaError
from pea.names import name_type
from pea.resources import load_registry, lookup


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EncoderSpec(_Frozen):
    """A text encoder as a GPU user loads it: `loader` is `transformers:<Class>` or `open_clip:<arch>` (an
    open_clip architecture with a Hugging Face text tower, its safetensors weights in the repo `id`); `tokenizer`
    is always `transformers:<Class>`, read from `id` (pea.models.encoders.load_text_encoder)."""

    id: str
    loader: str
    tokenizer: str
    hidden_size: int  # width of the states at hidden_layer: sizes the adapter before loading; load checks it
    max_tokens: int
    hidden_layer: int = -1
    use_attention_mask: bool = True  # CLIP text towers in SD pipelines are run without one


class ModelRef(_Frozen):
    id: str
    loader: str


class TranslationSpec(_Frozen):
    id: str
    code: str


class PaperEncoder(_Frozen):
    id: str
    why_not: str


class Language(_Frozen):
    code: name_type("language code")
    name: str
    native_name: str
    student_encoder: EncoderSpec
    clipscore: ModelRef
    translation: TranslationSpec
    buckets: dict[str, int]
    paper_encoder: PaperEncoder | None = None
    # other encoders an adapter for this language can be trained on instead of student_encoder, by name
    encoder_variants: dict[str, EncoderSpec] = {}


@cache
def registry() -> dict[str, Language]:
    return load_registry("languages.yaml", Language, "code")


def get_language(code: str) -> Language:
    return lookup(registry(), code, "language")


def encoder_variant(language: Language, name: str) -> EncoderSpec:
    """The language's encoder variant `name` (e.g. the paper's Multilingual-CLIP or MulT5, Table 1)."""
    return pick_variant(language.encoder_variants, name, f"language {language.code!r}")


def pick_variant(variants: dict[str, EncoderSpec], name: str, owner: str) -> EncoderSpec:
    if name not in variants:
        raise PeaError(f"{owner} has no encoder variant {name!r}",
                       f"use one of: {', '.join(variants)}" if variants else "train on its own student encoder")
    return variants[name]
