"""Resolution buckets (SDXL-style, paper Appendix 6.1): sides multiples of `step`, area about side^2,
both orientations; every image goes to the bucket nearest its aspect ratio, resized to cover it and
cropped, with its original size and crop offset kept for SDXL's micro-conditioning."""

import math

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class BucketConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    side: int = Field(1024, gt=0)  # target area is side^2 (640 or 1024 on SDXL, 512 on SD1.5)
    step: int = Field(64, gt=0)  # bucket sides are multiples of this (64 on SD/SDXL: VAE x UNet strides)
    max_ratio: float = Field(2.0, ge=1.0)  # longest/shortest side
    min_source_side: int | None = None  # smaller images are dropped as tiny; default side // 4
    samples_per_shard: int = Field(1000, gt=0)
    jpeg_quality: int = Field(95, ge=1, le=100)

    @property
    def tiny_below(self) -> int:
        return self.min_source_side if self.min_source_side is not None else self.side // 4


def make_buckets(cfg: BucketConfig) -> list[tuple[int, int]]:
    """(width, height) pairs, portrait to landscape."""
    area = cfg.side**2
    buckets = set()
    width = cfg.step
    while width <= cfg.side * math.sqrt(cfg.max_ratio):
        height = max(cfg.step, round(area / width / cfg.step) * cfg.step)
        if max(width / height, height / width) <= cfg.max_ratio:
            buckets.add((width, height))
        width += cfg.step
    return sorted(buckets, key=lambda wh: wh[0] / wh[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(width / height)
    return min(buckets, key=lambda wh: abs(math.log(wh[0] / wh[1]) - ratio))


def cover_and_crop(image: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """Resize so the image covers the bucket, then centre-crop; returns the image and (top, left)."""
    bw, bh = bucket
    scale = max(bw / image.width, bh / image.height)
    size = (max(bw, math.ceil(image.width * scale)), max(bh, math.ceil(image.height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (size[0] - bw) // 2, (size[1] - bh) // 2
    return resized.crop((left, top, left + bw, top + bh)), (top, left)
