"""The data files that ship inside the package (languages, presets, profiles, model configs)."""

from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pea.errors import PeaError

T = TypeVar("T", bound=BaseModel)


def resource_path(*parts: str) -> Path:
    return Path(str(resources.files("pea").joinpath("resources", *parts)))


def load_yaml(*parts: str) -> dict:
    with resource_path(*parts).open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_registry(filename: str, model: type[T], key: str) -> dict[str, T]:
    """A YAML mapping of name -> entry, each validated as `model` with its name under `key`."""
    try:
        return {name: model(**{key: name}, **entry) for name, entry in load_yaml(filename).items()}
    except ValidationError as e:
        raise PeaError(f"pea/resources/{filename} is invalid: {e}", "fix the entry it names") from e


def lookup(registry: dict[str, T], name: str, what: str) -> T:
    if name not in registry:
        raise PeaError(f"unknown {what} {name!r}", f"use one of: {', '.join(registry)}")
    return registry[name]
