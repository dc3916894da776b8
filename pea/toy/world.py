"""Procedural images and their captions in every registered language, split into what adapter training may
see and what only evaluation asks for.

An image is one shape (circle, square, triangle, cross) of one colour on one background (black, grey,
brown), 32x32 px, near the centre. Position words were tried first and dropped: diffusers' attention blocks
carry no spatial position embedding, so a small UNet learns "on the left" only through conv padding, and
after the build's budget it drew positions at chance (shape 0.78, colour 0.82, position 0.25). Captions come
from templates written with each language's own words and word order. Culture items are native words for a
(shape, colour) pair whose dictionary English keeps only the shape (日の丸 -> "a circle"): translating loses
the colour, which is what hybrid training has to teach.

Held-out split: a quarter of the 72 (shape, colour, background) combinations, and one background of every
culture item, are never in the adapter's training data in any language; evaluation's headline numbers are
on them, so they measure transfer, not fit. The held-out combinations are those with (shape + colour +
background) index sum divisible by 4: every attribute value, every (shape, colour) pair and every
(colour, background) pair still occurs in the seen set, so each held-out scene is a new composition of seen
parts. The world's pretrained models (teacher, student encoders, judge) see every combination, as a real
base model and a real language CLIP would have.

`multilingual` is the paper's multilingual adapter (Sec. 3.4): one student encoder for every language,
trained on English data only, asked in every language.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
SHAPES = ["circle", "square", "triangle", "cross"]
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
          "purple": (150, 60, 200), "white": (240, 240, 240)}
BACKGROUNDS = {"black": (20, 20, 24), "grey": (105, 105, 105), "brown": (95, 60, 30)}
LANGS = ["ko", "zh", "ja", "ru", "it"]
MULTILINGUAL = "multilingual"
TOY_LANGS = [*LANGS, MULTILINGUAL]  # every language the toy world has an adapter for
# language -> {shape: word}, {colour: word}, {background: phrase}
WORDS = {
    "en": ({"circle": "circle", "square": "square", "triangle": "triangle", "cross": "cross"},
           {c: c for c in COLORS},
           {"black": "on a black background", "grey": "on a grey background", "brown": "on a brown background"}),
    "ko": ({"circle": "원", "square": "사각형", "triangle": "삼각형", "cross": "십자가"},
           {"red": "빨간", "green": "초록색", "blue": "파란", "yellow": "노란", "purple": "보라색", "white": "하얀"},
           {"black": "검은색 배경", "grey": "회색 배경", "brown": "갈색 배경"}),
    "zh": ({"circle": "圆形", "square": "正方形", "triangle": "三角形", "cross": "十字"},
           {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "white": "白色"},
           {"black": "黑色背景", "grey": "灰色背景", "brown": "棕色背景"}),
    "ja": ({"circle": "丸", "square": "四角", "triangle": "三角", "cross": "十字"},
           {"red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い", "purple": "紫の", "white": "白い"},
           {"black": "黒い背景", "grey": "灰色の背景", "brown": "茶色の背景"}),
    "ru": ({"circle": "круг", "square": "квадрат", "triangle": "треугольник", "cross": "крест"},
           {"red": "красный", "green": "зелёный", "blue": "синий", "yellow": "жёлтый", "purple": "фиолетовый",
            "white": "белый"},
           {"black": "на чёрном фоне", "grey": "на сером фоне", "brown": "на коричневом фоне"}),
    "it": ({"circle": "cerchio", "square": "quadrato", "triangle": "triangolo", "cross": "croce"},
           {"red": "rosso", "green": "verde", "blue": "blu", "yellow": "giallo", "purple": "viola", "white": "bianco"},
           {"black": "su sfondo nero", "grey": "su sfondo grigio", "brown": "su sfondo marrone"}),
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
    background: str
    culture_word: str | None = None  # set on culture samples: the native word that names (shape, colour)

    def attributes(self) -> tuple[str, str, str]:
        return self.shape, self.color, self.background

    @property
    def heldout(self) -> bool:
        """Never in the adapter's training data (see the module docstring for the rule)."""
        backgrounds = list(BACKGROUNDS)
        if self.culture_word:
            lang, k = _culture_index(self.culture_word)
            return backgrounds.index(self.background) == (k + LANGS.index(lang)) % len(backgrounds)
        index = SHAPES.index(self.shape) + list(COLORS).index(self.color) + backgrounds.index(self.background)
        return index % 4 == 0


def _culture_index(word: str) -> tuple[str, int]:
    for lang, items in CULTURE.items():
        if word in items:
            return lang, list(items).index(word)
    raise KeyError(word)


def caption(scene: Scene, lang: str) -> str:
    """The scene in `lang`'s words and word order; culture scenes by their native word."""
    shapes, colors, backgrounds = WORDS[lang]
    bg = backgrounds[scene.background]
    if scene.culture_word:
        thing = scene.culture_word
        return {"ko": f"{bg}의 {thing}", "zh": f"{bg}上的{thing}", "ja": f"{bg}の{thing}",
                "ru": f"{thing} {bg}", "it": f"{thing} {bg}"}[lang]
    shape, color = shapes[scene.shape], colors[scene.color]
    if lang == "en":
        return f"a {color} {shape} {bg}"
    if lang == "ko":
        return f"{bg}의 {color} {shape}"
    if lang == "zh":
        return f"{bg}上的{color}{shape}"
    if lang == "ja":
        return f"{bg}の{color}{shape}"
    if lang == "ru":
        return f"{color} {shape} {bg}"
    if scene.shape in ITALIAN_FEMININE:
        return f"una {shape} {ITALIAN_FEMININE_COLORS.get(color, color)} {bg}"
    return f"un {shape} {color} {bg}"


def dictionary_english(scene: Scene) -> str:
    """The translate baseline: native -> English word by word; a culture word becomes its shape only."""
    shapes, _, backgrounds = WORDS["en"]
    if scene.culture_word:
        return f"a {shapes[scene.shape]} {backgrounds[scene.background]}"
    return caption(scene, "en")


def render(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene drawn with a little jitter in place and size."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy = 16 + rng.randint(-2, 2), 16 + rng.randint(-2, 2)
    r = rng.randint(7, 9)
    color = COLORS[scene.color]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif scene.shape == "square":
        draw.rectangle((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), fill=color)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        w = max(2, r // 2 - 1)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-4, 5, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def general_scenes(heldout: bool | None = None) -> list[Scene]:
    """Every (shape, colour, background) combination; only the held-out ones (True) or the seen ones (False)."""
    scenes = [Scene(s, c, b) for s in SHAPES for c in COLORS for b in BACKGROUNDS]
    return scenes if heldout is None else [s for s in scenes if s.heldout == heldout]


def culture_scenes(lang: str, heldout: bool | None = None) -> list[Scene]:
    """`lang`'s culture items on every background (multilingual: every language's); split as general_scenes."""
    langs = LANGS if lang == MULTILINGUAL else [lang]
    scenes = [Scene(shape, color, b, word) for code in langs for word, (shape, color) in CULTURE[code].items()
              for b in BACKGROUNDS]
    return scenes if heldout is None else [s for s in scenes if s.heldout == heldout]


def culture_lang(scene: Scene) -> str:
    return _culture_index(scene.culture_word)[0]


def prompt_langs(lang: str, scenes: list[Scene]) -> list[str]:
    """The language each scene is asked in: `lang` itself, or for the multilingual adapter the languages in
    turn (a culture scene in its own language)."""
    if lang != MULTILINGUAL:
        return [lang] * len(scenes)
    return [culture_lang(s) if s.culture_word else LANGS[i % len(LANGS)] for i, s in enumerate(scenes)]


def sample_scenes(n: int, rng: random.Random, scenes: list[Scene]) -> list[Scene]:
    return [scenes[rng.randrange(len(scenes))] for _ in range(n)]


def training_scenes(lang: str, n: int, culture_share: float, rng: random.Random) -> list[Scene]:
    """The adapter's training samples: seen general scenes and, except for the multilingual adapter (English
    data only), `culture_share` of seen culture scenes."""
    n_culture = 0 if lang == MULTILINGUAL else int(n * culture_share)
    return (sample_scenes(n - n_culture, rng, general_scenes(heldout=False))
            + sample_scenes(n_culture, rng, culture_scenes(lang, heldout=False)))


def write_folders(parallel: Path, culture: Path, lang: str, n: int, culture_share: float, seed: int) -> None:
    """Toy training samples as harvestable folders: <stem>.png with <stem>.txt (native) and, for parallel
    samples, <stem>.en.txt (English); culture samples are native only. The multilingual adapter's data is
    English on both sides."""
    rng = random.Random(f"{seed}-{lang}-data")
    native = "en" if lang == MULTILINGUAL else lang
    scenes = training_scenes(lang, n, culture_share, rng)
    for folder in (parallel, culture):
        folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        folder = culture if scene.culture_word else parallel
        render(scene, rng).save(folder / f"{i:06d}.png")
        (folder / f"{i:06d}.txt").write_text(caption(scene, native), encoding="utf-8")
        if not scene.culture_word:
            (folder / f"{i:06d}.en.txt").write_text(caption(scene, "en"), encoding="utf-8")
