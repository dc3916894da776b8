"""What one bucketed sample holds, decoded from a shard: image or cached features, captions, SDXL ids."""

import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_tensors

from pea.errors import PeaError
from pea.features import TEXT_KEYS, LatentDistribution


def time_ids(meta: dict) -> list[float]:
    """SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)."""
    bw, bh = meta["bucket"]
    return [*meta["original_size"], *meta["crop_top_left"], bh, bw]


def decode_image(data: bytes) -> torch.Tensor:
    """JPEG/PNG bytes -> (3, H, W) in [-1, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


@dataclass
class CachedFeatures:
    """B samples of a feature shard: their latent distribution, captions and SDXL ids, and their text
    embeddings (pea.features.TEXT_KEYS) where the cache stage stored them, else None (encoded in training)."""

    latents: LatentDistribution
    english: list[str]
    native: list[str]
    culture: torch.Tensor
    time_ids: torch.Tensor
    keys: list[str]
    text: dict[str, torch.Tensor | None] | None


def features_batch(samples: list[dict]) -> CachedFeatures:
    """Samples of a feature shard ({'__key__', 'safetensors', 'json'}) -> CachedFeatures, in fp32."""
    tensors = [load_tensors(s["safetensors"]) for s in samples]
    metas = [json.loads(s["json"]) for s in samples]
    if "latent_mean" not in tensors[0]:
        raise PeaError(f"feature sample {samples[0]['__key__']} was cached by an older pea (one latent, no distribution)",
                       "delete the language's features/<preset> folder and run `pea cache` again")

    def stack(name):
        return torch.stack([t[name] for t in tensors]).float() if name in tensors[0] else None

    text = None
    if "teacher_context" in tensors[0]:
        text = {k: stack(k) for k in TEXT_KEYS} | {"student_mask": torch.stack([t["student_mask"] for t in tensors])}
    return CachedFeatures(
        latents=LatentDistribution(stack("latent_mean"), stack("latent_std")),
        english=[m["english"] for m in metas], native=[m["native"] for m in metas],
        culture=torch.tensor([m["kind"] == "culture" for m in metas]),
        time_ids=torch.tensor([time_ids(m) for m in metas], dtype=torch.float32),
        keys=[s["__key__"] for s in samples], text=text,
    )


def image_batch(samples: list[dict]) -> dict:
    """Samples of a bucketed image shard -> inputs of FeatureExtractor (the online path)."""
    metas = [json.loads(s["json"]) for s in samples]
    return {
        "images": torch.stack([decode_image(s["jpg"]) for s in samples]),
        "english": [m["english"] for m in metas],
        "native": [m["native"] for m in metas],
        "culture": torch.tensor([m["kind"] == "culture" for m in metas]),
        "time_ids": torch.tensor([time_ids(m) for m in metas], dtype=torch.float32),
        "keys": [s["__key__"] for s in samples],
    }
