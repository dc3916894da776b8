"""Procedural images and their captions in every registered language.

An image is one shape (circle, square, triangle, cross) of one colour at one position (left, right, top,
bottom) on a dark background, 32x32 px. Captions come from templates written with each language's own words
and word order. Culture items are native words for a (shape, colour) pair whose dictionary English keeps only
the shape (日の丸 -> "a circle"): translating loses the colour, which is what hybrid training has to teach.
"""

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SHAPES = ["circle", "square", "triangle", "cross"]
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
          "purple": (150, 60, 200), "white": (240, 240, 240)}
POSITIONS = {"left": (9, 16), "right": (23, 16), "top": (16, 9), "bottom": (16, 23)}
BACKGROUND = (20, 20, 24)
LANGS = ["ko", "zh", "ja", "ru", "it"]

# language -> {shape: word}, {colour: word}, {position: word}
WORDS = {
    "en": ({"circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross"},
           {c: c for c in COLORS},
           {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}),
    "ko": ({"circle": "원", "square": "사각형", "triangle": "삼각형", "cross": "십자가"},
           {"red": "빨간", "green": "초록색", "blue": "파란", "yellow": "노란", "purple": "보라색", "white": "하얀"},
           {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽"}),
    "zh": ({"circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字"},
           {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "white": "白色"},
           {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边"}),
    "ja": ({"circle": "丸", "square": "四角", "triangle": "三角", "cross": "十字"},
           {"red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い", "purple": "紫の", "white": "白い"},
           {"left": "左", "right": "右", "top": "上", "bottom": "下"}),
    "ru": ({"circle": "круг", "square": "квадрат", "triangle": "треугольник", "cross": "крест"},
           {"red": "красный", "green": "зелёный", "blue": "синий", "yellow": "жёлтый", "purple": "фиолетовый",
            "white": "белый"},
           {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу"}),
    "it": ({"circle": "cerchio", "square": "quadrato", "triangle": "triangolo", "cross": "croce"},
           {"red": "rosso", "green": "verde", "blue": "blu", "yellow": "giallo", "purple": "viola", "white": "bianco"},
           {"left": "a sinistra", "right": "a destra", "top": "in alto", "bottom": "in basso"}),
}
ITALIAN_FEMININE = {"cross"}
ITALIAN_FEMININE_COLORS = {"rosso": "rossa", "giallo": "gialla", "bianco": "bianca"}

# language -> native word -> (shape, colour); the dictionary's English is the shape alone
CULTURE = {
    "ko": {"태극": ("circle", "blue"), "청자": ("square", "green")},
    "zh": {"福字": ("square", "red"), "玉璧": ("circle", "green")},
    "ja": {"日の丸": ("circle", "red"), "富士": ("triangle", "white")},
    "ru": {"Кремль": ("square", "red"), "берёза": ("cross", "white")},
    "it": {"Vesuvio": ("triangle", "purple"), "limoncello": ("circle", "yellow")},
}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    position: str
    culture_word: str | None = None  # set on culture samples: the native word that names (shape, colour)

    def attributes(self) -> tuple[str, str, str]:
        return self.shape, self.color, self.position


def caption(scene: Scene, lang: str) -> str:
    """The scene in `lang`'s words and word order; culture scenes by their native word."""
    shapes, colors, positions = WORDS[lang]
    pos = positions[scene.position]
    if scene.culture_word:
        thing = scene.culture_word
        return {"ko": f"{pos}에 있는 {thing}", "zh": f"{pos}的{thing}", "ja": f"{pos}にある{thing}",
                "ru": f"{thing} {pos}", "it": f"{thing} {pos}"}[lang]
    shape, color = shapes[scene.shape], colors[scene.color]
    if lang == "en":
        return f"a {color} {shape} {pos}"
    if lang == "ko":
        return f"{pos}에 있는 {color} {shape}"
    if lang == "zh":
        return f"{pos}的{color}{shape}"
    if lang == "ja":
        return f"{pos}にある{color}{shape}"
    if lang == "ru":
        return f"{color} {shape} {pos}"
    if scene.shape in ITALIAN_FEMININE:
        return f"una {shape} {ITALIAN_FEMININE_COLORS.get(color, color)} {pos}"
    return f"un {shape} {color} {pos}"


def dictionary_english(scene: Scene, lang: str) -> str:
    """The translate baseline: native -> English word by word; a culture word becomes its shape only."""
    shapes, colors, positions = WORDS["en"]
    if scene.culture_word:
        return f"a {shapes[scene.shape]} {positions[scene.position]}"
    return caption(scene, "en")


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene drawn with a little jitter in place and size."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    cx, cy = cx + rng.randint(-1, 1), cy + rng.randint(-1, 1)
    r = rng.randint(5, 6)
    color = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif scene.shape == "square":
        draw.rectangle((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), fill=color)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        w = max(1, r // 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-4, 5, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def general_scenes() -> list[Scene]:
    return [Scene(s, c, p) for s in SHAPES for c in COLORS for p in POSITIONS]


def culture_scenes(lang: str) -> list[Scene]:
    return [Scene(shape, color, p, word) for word, (shape, color) in CULTURE[lang].items() for p in POSITIONS]


def sample_scenes(n: int, rng: random.Random, scenes: list[Scene]) -> list[Scene]:
    return [scenes[rng.randrange(len(scenes))] for _ in range(n)]
