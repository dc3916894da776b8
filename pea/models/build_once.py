"""Build a locally made model folder once per version of what makes it.

The folder is written under a temporary name and renamed, so an interrupted build never leaves half a model
behind; a `.complete` marker holding `digest` says which version is there, so a changed maker rebuilds.
(pea.models.tiny keeps its own copy of this: its source is part of the toy world's digest.)
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, digest: str, save: Callable[[Path], None]) -> Path:
    """`target`, built by `save(folder)` unless a build with the same `digest` is already there."""
    marker = target / ".complete"
    if marker.exists() and marker.read_text().strip() == digest:
        return target
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    (tmp / ".complete").write_text(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
