"""Where every stage's output lives under the storage root (the README's "Data" section), each path spelled
once. Every function returns the parts that `pea.storage.Storage` joins; `*parts` extends them by file name.

A stage's outputs live in a folder named by `key` of what made them (its inputs' digests and its config), and
its manifest.json, written last at the stage's own folder, names that folder: a changed config or a new harvest
writes new outputs beside the old ones, never over them, and a re-run with the same inputs finds its own."""

import hashlib
import json


def key(*made_of) -> str:
    """12 hex digits of sha256 over `made_of` (JSON-able values): the folder of the outputs they make."""
    return hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:12]


STUDENTS = "unet"  # in place of a language: the scope of what belongs to none (the registered student UNets' locks)


def raw_dir(lang: str, *parts: str) -> tuple[str, ...]:
    """img2dataset shards per source: raw/<source>/."""
    return (lang, "raw", *parts)


def captions_dir(lang: str, *parts: str) -> tuple[str, ...]:
    """One caption table per raw shard: captions/<source>/<key of its harvest and the model>/<shard>.parquet."""
    return (lang, "captions", *parts)


def shards_dir(lang: str, *parts: str) -> tuple[str, ...]:
    """Bucketed webdataset shards: shards/<key of the caption tables and bucket config>/<W>x<H>/."""
    return (lang, "shards", *parts)


def features_dir(lang: str, preset: str, *parts: str) -> tuple[str, ...]:
    """Per base-model preset, the bucketed shards with cached features: features/<preset>/<key>/<shard path>."""
    return (lang, "features", preset, *parts)


def train_dir(lang: str, *parts: str) -> tuple[str, ...]:
    """Ray Train's storage: train/<run name>/ holds its checkpoints."""
    return (lang, "train", *parts)


def adapter_dir(lang: str, run_name: str, *parts: str) -> tuple[str, ...]:
    """The final adapter of a training run."""
    return (lang, "adapters", run_name, *parts)


def eval_dir(lang: str, run_name: str, *parts: str) -> tuple[str, ...]:
    """A run's evaluation: report page, grid, metrics.json."""
    return (lang, "eval", run_name, *parts)


def translation_cache(*parts: str) -> tuple[str, ...]:
    """Translations by digest of (model, direction, text), shared by every language."""
    return ("cache", "translation", *parts)


def lock_dir(lang: str, *parts: str) -> tuple[str, ...]:
    """The stages' locks (pea.locks): .locks/<stage>.json, a folder no user-given name can be (it starts with '.')."""
    return (lang, ".locks", *parts)
