"""Image-text metrics (paper Sec. 4.2): CLIPScore in the language with its own CLIP, CLIPScore_en with
OpenCLIP ViT-bigG-14, PickScore, ImageReward, and the toy world's judge.

Each scorer is built from a model id or path through the library that publishes the model (transformers,
open_clip, the ImageReward checkpoint format in `image_reward.py`) and scores a batch of (image, text)
pairs. Tests hand them tiny models saved locally; the code path is the one that loads the real ones.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch

from pea.models.precision import default_device
from PIL import Image
from pea.evaluate.config import EvalModels
from pea.languages import ModelRef


class Scorer(Protocol):
    name: str
    text: Literal["native", "english"]  # which side of an EvalPrompt the metric reads

    def __call__(self, images: list[Image.Image], texts: list[str]) -> list[float]: ...


def _features(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# The text length a CLIP family was trained at, keyed by the model's config.model_type. Tokenizers do not
# all say it: Chinese-CLIP's has no model_max_length and its 512 text positions are BERT's, but it was
# trained on 52 tokens. CLIP-style models (CLIP, AltCLIP, PickScore) read CLIP's 77.
TRAINED_TEXT_TOKENS = {"chinese_clip": 52}
CLIP_TEXT_TOKENS = 77


def trained_text_tokens(model) -> int:
    """How many tokens of a prompt the model reads: longer prompts are truncated to what it was trained on."""
    return TRAINED_TEXT_TOKENS.get(model.config.model_type, CLIP_TEXT_TOKENS)


@dataclass
class CLIPScore:
    """100 * max(cos(image, text), 0) with a transformers CLIP-family model (CLIP, ChineseCLIP, AltCLIP)."""

    model: object
    processor: object
    name: str = "clipscore_native"
    text: Literal["native", "english"] = "native"
    max_tokens: int = CLIP_TEXT_TOKENS

    @classmethod
    def load(cls, ref: ModelRef, source: str, **kwargs) -> "CLIPScore":
        from transformers import AutoProcessor

        from pea.models.loading import load_transformers_class

        model = load_transformers_class(ref.loader).from_pretrained(source).eval().to(default_device())
        return cls(model, AutoProcessor.from_pretrained(source), max_tokens=trained_text_tokens(model), **kwargs)

    @torch.no_grad()
    def __call__(self, images, texts):
        device = next(self.model.parameters()).device
        text = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_tokens).to(device)
        pixels = self.processor(images=images, return_tensors="pt").to(device)
        t = _features(self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text.get("attention_mask")))
        i = _features(self.model.get_image_features(pixel_values=pixels["pixel_values"]))
        return self._score(i, t).tolist()

    def _score(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        return 100 * cos.clamp(min=0)


@dataclass
class PickScore(CLIPScore):
    """PickScore: a CLIP-H fine-tuned on human preferences; logit_scale * cos, on the English prompt."""

    name: str = "pickscore"
    text: Literal["native", "english"] = "english"

    @classmethod
    def load_pick(cls, model_id: str, processor_id: str) -> "PickScore":
        from transformers import AutoProcessor, CLIPModel

        return cls(CLIPModel.from_pretrained(model_id).eval().to(default_device()), AutoProcessor.from_pretrained(processor_id))

    def _score(self, image, text):
        cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        return self.model.logit_scale.exp().float() * cos


@dataclass
class OpenCLIPScore:
    """CLIPScore_en: 100 * max(cos, 0) with an open_clip model (ViT-bigG-14 on the English prompt)."""

    model: object
    preprocess: object
    tokenizer: object
    name: str = "clipscore_en"
    text: Literal["native", "english"] = "english"

    @classmethod
    def load(cls, arch: str, pretrained: str) -> "OpenCLIPScore":
        import open_clip

        # require_pretrained: open_clip only logs a warning when no weights load; in pea that is an error
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=default_device(),
                                                                     require_pretrained=True)
        return cls(model.eval(), preprocess, open_clip.get_tokenizer(arch))

    @torch.no_grad()
    def __call__(self, images, texts):
        device = next(self.model.parameters()).device
        pixels = torch.stack([self.preprocess(im) for im in images]).to(device)
        i = self.model.encode_image(pixels)
        t = self.model.encode_text(self.tokenizer(texts).to(device))
        cos = torch.nn.functional.cosine_similarity(i.float(), t.float(), dim=-1)
        return (100 * cos.clamp(min=0)).tolist()


def load_openclip_tiny(folder: Path) -> OpenCLIPScore:
    """A locally built open_clip model: its architecture JSON is registered, its weights are the checkpoint."""
    import open_clip

    config = next(folder.glob("*.json"))
    open_clip.add_model_config(config)
    return OpenCLIPScore.load(config.stem, str(folder / "open_clip_model.safetensors"))


def load_scorers(models: EvalModels, clip_ref: ModelRef, model_cache: Path, native: bool = True) -> list[Scorer]:
    """Every metric's scorer (without `native`: the English ones only), models resolved from the hub id, a path
    or a tiny build."""
    from pea.evaluate.image_reward import ImageRewardScorer
    from pea.models.loading import model_source

    ref = models.clipscore_native or clip_ref
    scorers: list[Scorer] = [CLIPScore.load(ref, model_source(ref.id, model_cache))] if native else []
    if models.clipscore_en.startswith("tiny-"):
        scorers.append(load_openclip_tiny(Path(model_source(models.clipscore_en, model_cache))))
    else:
        scorers.append(OpenCLIPScore.load(models.clipscore_en, models.clipscore_en_pretrained))
    scorers.append(ImageRewardScorer.load(model_source(models.image_reward, model_cache),
                                          model_source(models.image_reward_tokenizer, model_cache)))
    scorers.append(PickScore.load_pick(model_source(models.pickscore, model_cache),
                                       model_source(models.pickscore_processor, model_cache)))
    return scorers
