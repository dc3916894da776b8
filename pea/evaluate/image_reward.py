"""ImageReward (Xu et al. 2023) from its published checkpoint, without the `image-reward` package.

That package pins timm 0.6 and imports a function transformers 5 no longer has, so it cannot share this
environment (ENVIRONMENT.md). Its model is BLIP: a ViT image encoder, a BERT text encoder with
cross-attention to the image tokens (configured by med_config.json), and an MLP head on the text [CLS]
state; transformers ships BLIP's vision and text towers, so this module only renames the checkpoint's keys
onto them and rebuilds the head. The published checkpoint is a pickle: it is read with
`torch.load(weights_only=True)`, which loads tensors and refuses code; a `.safetensors` copy is preferred.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pea.models.precision import default_device
from torch import nn

from pea.errors import PeaError

# ImageReward's reward normalisation (its published mean and std of raw rewards)
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
POSITION_IDS = "blip.text_encoder.embeddings.position_ids"
UNUSED = ("blip.vision_proj.", "blip.text_proj.")

_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]


def vision_key(key: str) -> str:
    """BLIP's timm-style ViT key -> transformers' BlipVisionModel key."""
    for pattern, repl in _VISION_RENAMES:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    raise PeaError(f"ImageReward checkpoint has an unknown vision key {key!r}", "use the published ImageReward.pt")


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    safe, pickled = folder / "ImageReward.safetensors", folder / "ImageReward.pt"
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(safe)
    if not pickled.is_file():
        raise PeaError(f"{folder} holds no ImageReward.pt or ImageReward.safetensors", "point image_reward at its folder")
    try:
        state = torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure means the same thing here
        raise PeaError(f"{pickled} is not a tensors-only checkpoint ({e})", "use the published ImageReward.pt") from e
    return state.get("state_dict", state)


def _configs(state: dict[str, torch.Tensor], med: dict):
    from transformers import BlipTextConfig, BlipVisionConfig

    patch = state["blip.visual_encoder.patch_embed.proj.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    tokens = state["blip.visual_encoder.pos_embed"].shape[1] - 1
    depth = len({k.split(".")[3] for k in state if k.startswith("blip.visual_encoder.blocks.")})
    vision = BlipVisionConfig(
        hidden_size=width, intermediate_size=state["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=max(1, width // 64), image_size=int(math.isqrt(tokens)) * patch_size,
        patch_size=patch_size, layer_norm_eps=1e-6)
    text = BlipTextConfig(
        vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"], num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"], layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        hidden_act=med.get("hidden_act", "gelu"), encoder_hidden_size=width, is_decoder=True, bos_token_id=None, sep_token_id=None,
        pad_token_id=med.get("pad_token_id", 0))
    return vision, text


def _head(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """The reward MLP, rebuilt from the checkpoint's `mlp.layers.<i>` linears (dropouts in between)."""
    linears = {int(k.split(".")[2]): v for k, v in state.items() if re.fullmatch(r"mlp\.layers\.\d+\.weight", k)}
    layers: list[nn.Module] = [nn.Identity()] * (max(linears) + 1)
    for i, w in linears.items():
        layers[i] = nn.Linear(w.shape[1], w.shape[0])
    return nn.Sequential(*layers)


def _listed(keys: list[str], n: int = 5) -> str:
    """At most n key names, so that the error stays one readable line, and how many more there are."""
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _load_part(module: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Every weight of `module` from the checkpoint, and no checkpoint tensor left over."""
    missing, unexpected = module.load_state_dict(weights, strict=False)
    problems = [f"{label} {_listed(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys]
    if problems:
        raise PeaError(f"ImageReward {what} weights do not fit ({'; '.join(problems)})",
                       "use the published ImageReward.pt with its med_config.json")


def _split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's tensors per part ("vision", "text", "head"), keys as transformers names them.

    Upstream's BERT saves `embeddings.position_ids` (a persistent buffer there, non-persistent in
    transformers): it holds no weights, so it is dropped once checked to be 0..n-1. BLIP's contrastive
    projections (`blip.vision_proj`, `blip.text_proj`) are in the file but the reward reads neither. Any other
    key is refused: a checkpoint that is not ImageReward's must not load with some of its tensors ignored."""
    ids = state.get(POSITION_IDS)
    if ids is not None and not torch.equal(ids.flatten(), torch.arange(ids.numel(), dtype=ids.dtype)):
        raise PeaError(f"ImageReward checkpoint's {POSITION_IDS} is not 0..{ids.numel() - 1}",
                       "use the published ImageReward.pt")
    parts: dict[str, dict[str, torch.Tensor]] = {"vision": {}, "text": {}, "head": {}}
    unknown = []
    for key, value in state.items():
        if key == POSITION_IDS or key.startswith(UNUSED):
            continue
        if key.startswith("blip.visual_encoder."):
            parts["vision"][vision_key(key.removeprefix("blip.visual_encoder."))] = value
        elif key.startswith("blip.text_encoder."):
            parts["text"][key.removeprefix("blip.text_encoder.")] = value
        elif key.startswith("mlp.layers."):
            parts["head"][key.removeprefix("mlp.layers.")] = value
        else:
            unknown.append(key)
    if unknown:
        raise PeaError(f"ImageReward checkpoint has unknown keys: {_listed(unknown)}",
                       "use the published ImageReward.pt")
    return parts


class ImageRewardModel(nn.Module):
    def __init__(self, state: dict[str, torch.Tensor], med_config: dict):
        from transformers import BlipTextModel, BlipVisionModel

        super().__init__()
        vision_cfg, text_cfg = _configs(state, med_config)
        self.image_size = vision_cfg.image_size
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.head = _head(state)
        modules = {"vision": self.vision, "text": self.text, "head": self.head}
        for what, weights in _split(state).items():
            _load_part(modules[what], weights, what)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S, S) CLIP-normalised, tokens (B, 35) -> (B,) normalised rewards."""
        image = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=image_mask).last_hidden_state
        reward = self.head(text[:, 0, :].float()).squeeze(-1)
        return (reward - REWARD_MEAN) / REWARD_STD


def _files(source: str) -> Path:
    """A local folder as it is; a hub repo fetched into the Hugging Face cache."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(source, "ImageReward.pt")
        return Path(hf_hub_download(source, "med_config.json")).parent
    except Exception as e:  # noqa: BLE001 -- hub errors come in many types; all mean "not available"
        raise PeaError(f"cannot load ImageReward from {source!r} ({e})", "check the hub id or give a local folder") from e


@dataclass
class ImageRewardScorer:
    model: ImageRewardModel
    tokenizer: object
    name: str = "image_reward"
    text: Literal["native", "english"] = "english"

    @classmethod
    def load(cls, source: str, tokenizer_source: str) -> "ImageRewardScorer":
        from transformers import BertTokenizer

        folder = _files(source)
        med = json.loads((folder / "med_config.json").read_text(encoding="utf-8"))
        model = ImageRewardModel(_read_state(folder), med).eval()
        tokenizer = BertTokenizer.from_pretrained(tokenizer_source)
        # BLIP's tokenizer: BERT's plus a [DEC] bos token and an [ENC] token (vocab 30522 -> 30524)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        return cls(model.to(default_device()), tokenizer)

    def preprocess(self, images) -> torch.Tensor:
        from torchvision import transforms

        size = self.model.image_size
        tf = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(size),
            transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
        return torch.stack([tf(im.convert("RGB")) for im in images])

    def __call__(self, images, texts):
        device = next(self.model.parameters()).device
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        rewards = self.model(self.preprocess(images).to(device), tok.input_ids.to(device), tok.attention_mask.to(device))
        return rewards.tolist()
