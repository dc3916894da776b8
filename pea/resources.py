"""The data files that ship inside the package (languages, presets, profiles, model configs)."""

from importlib import resources
from pathlib import Path

import yaml


def resource_path(*parts: str) -> Path:
    return Path(str(resources.files("pea").joinpath("resources", *parts)))


def load_yaml(*parts: str) -> dict:
    with resource_path(*parts).open(encoding="utf-8") as f:
        return yaml.safe_load(f)
