"""Block-removal recipes: which resnets, attentions, transformer blocks, stages and mid block of a teacher UNet
a compressed student keeps. The named ones (BK-SDM base/small/tiny for SD1.5, their SDXL analogues) live in
pea/resources/compress.yaml with the source each was read from; pea/compress/student.py applies one to a
teacher."""

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pea.names import name_type
from pea.resources import load_registry, lookup

Layers = tuple[tuple[int, ...], ...]  # per stage, the teacher layer indices (or transformer depths) kept


class Recipe(BaseModel):
    """One student architecture, stated relative to its teacher (see compress.yaml for the conventions).
    None keeps the teacher's layers or depths as they are."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: name_type("recipe name")
    family: Literal["sd15", "sdxl"]
    down: Layers | None = None  # per kept level, outermost first
    up: Layers | None = None  # per kept level, in up-block order (innermost first)
    levels_removed: int = 0  # innermost resolution stages removed
    mid: Literal["keep", "remove", "resnet"] = "keep"
    down_depth: Layers | None = None  # transformer blocks kept per down attention
    up_depth: Layers | None = None  # transformer blocks kept per up attention


@cache
def registry() -> dict[str, Recipe]:
    return load_registry("compress.yaml", Recipe, "name")


def get_recipe(name: str) -> Recipe:
    return lookup(registry(), name, "compression recipe")
