"""What one bucketed sample holds, decoded from a shard: image or cached features, captions, SDXL ids."""

import io
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_tensors

from pea.kd_types import KDBatch


def time_ids(meta: dict) -> list[float]:
    """SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)."""
    bw, bh = meta["bucket"]
    return [*meta["original_size"], *meta["crop_top_left"], bh, bw]


def decode_image(data: bytes) -> torch.Tensor:
    """JPEG/PNG bytes -> (3, H, W) in [-1, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def features_batch(samples: list[dict], dtype=torch.float32) -> KDBatch:
    """Samples of a feature shard ({'__key__', 'safetensors', 'json'}) -> a KDBatch."""
    tensors = [load_tensors(s["safetensors"]) for s in samples]
    metas = [json.loads(s["json"]) for s in samples]

    def stack(name):
        if name not in tensors[0]:
            return None
        return torch.stack([t[name] for t in tensors]).to(dtype)

    return KDBatch(
        latents=stack("latents"),
        teacher_context=stack("teacher_context"),
        teacher_pooled=stack("teacher_pooled"),
        student_states=stack("student_states"),
        student_mask=torch.stack([t["student_mask"] for t in tensors]),
        culture=torch.tensor([m["kind"] == "culture" for m in metas]),
        time_ids=stack("time_ids"),
        keys=[s["__key__"] for s in samples],
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
