"""Small generated datasets for the data-stage tests."""

import io
from pathlib import Path

from PIL import Image

COLORS = {"red": ((220, 30, 30), "빨간"), "green": ((30, 200, 30), "초록"), "blue": ((30, 30, 220), "파란")}
SHAPES = {"circle": "원", "square": "사각형"}


def image_bytes(width: int, height: int, color, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


def make_folder(folder: Path, n: int = 12, english_only_every: int = 0, size=(48, 40)) -> Path:
    """n images with Korean (and English) captions; sizes vary so that several buckets are used."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        shape = list(SHAPES)[i % 2]
        w, h = (size[0], size[1]) if i % 2 == 0 else (size[1], size[0] + 24)
        (folder / f"img{i:03d}.jpg").write_bytes(image_bytes(w, h, COLORS[color][0]))
        if not (english_only_every and i % english_only_every == 0):
            (folder / f"img{i:03d}.txt").write_text(f"{COLORS[color][1]} {SHAPES[shape]}", encoding="utf-8")
        (folder / f"img{i:03d}.en.txt").write_text(f"a {color} {shape}", encoding="utf-8")
    return folder
