"""The toy world's CLIPScore: an attribute classifier trained on real world images.

score(image, scene) is the mean of its probabilities for the asked shape, colour and background, so a random
image scores about chance = mean(1/4, 1/6, 1/3) and a faithful one close to 1.
"""

import random

import numpy as np
import torch
from torch import nn

from pea.toy.world import BACKGROUNDS, COLORS, SHAPES, Scene, general_scenes, render, sample_scenes

HEADS = {"shape": SHAPES, "color": list(COLORS), "background": list(BACKGROUNDS)}
CHANCE = float(np.mean([1 / len(v) for v in HEADS.values()]))


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, 32, 32) in [-1, 1] -> logits per head."""
        h = self.body(images)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def head_probs(self, images: torch.Tensor, scenes: list[Scene]) -> dict[str, torch.Tensor]:
        """head -> (B,) probability of each scene's value on that head."""
        probs = {k: v.softmax(-1) for k, v in self(images).items()}
        return {k: probs[k][torch.arange(len(scenes)), _targets(scenes, k)] for k in HEADS}

    @torch.no_grad()
    def head_hits(self, images: torch.Tensor, scenes: list[Scene]) -> dict[str, torch.Tensor]:
        """head -> (B,) 1.0 where the judge's top class is the scene's value (per-head accuracy)."""
        return {k: (v.argmax(-1) == _targets(scenes, k)).float() for k, v in self(images).items()}

    def score(self, images: torch.Tensor, scenes: list[Scene], heads: tuple[str, ...] = tuple(HEADS)) -> torch.Tensor:
        """(B,) mean probability of each scene's values on `heads` (default: shape, colour and background)."""
        probs = self.head_probs(images, scenes)
        return torch.stack([probs[k] for k in heads]).mean(0)


def _targets(scenes: list[Scene], head: str) -> torch.Tensor:
    index = {v: i for i, v in enumerate(HEADS[head])}
    return torch.tensor([index[getattr(s, head)] for s in scenes])


def to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def train_judge(seed: int = 0, n: int = 6000, steps: int = 600, batch: int = 64) -> Judge:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    scenes = sample_scenes(n, rng, general_scenes())
    images = to_tensor([render(s, rng) for s in scenes])
    targets = {k: _targets(scenes, k) for k in HEADS}
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3)
    for step in range(steps):
        idx = torch.randint(0, n, (batch,))
        logits = judge(images[idx])
        loss = sum(nn.functional.cross_entropy(logits[k], targets[k][idx]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return judge.eval()
