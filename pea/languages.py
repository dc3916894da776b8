"""The language registry: which encoder, CLIP, translation model and buckets each language uses."""

from functools import cache

from pydantic import BaseModel, ConfigDict

from pea.names import name_type
from pea.resources import load_registry, lookup


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EncoderSpec(_Frozen):
    """A text encoder as a GPU user loads it: `loader` is `transformers:<Class>` or `open_clip:<arch>`."""

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


@cache
def registry() -> dict[str, Language]:
    return load_registry("languages.yaml", Language, "code")


def get_language(code: str) -> Language:
    return lookup(registry(), code, "language")
