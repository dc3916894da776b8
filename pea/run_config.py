"""One run of the pipeline for one language, typed and frozen.

A `RunConfig` says what a run does (base-model preset, data, training method and schedule, evaluation, the
champion gate); the profile says where it runs (Ray, storage, MLflow). It is the flow `pea`'s parameter beside
`lang` (Prefect builds the parameter schema from it, so a deployment run can set any field), the object
`pea train-language` builds from its flags or from `--config run.yaml`, what MLflow logs as parameters and
what a training job stores and compares when it resumes. Every default is written here or in the config
class of the stage it belongs to, once.
"""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pea.data.sources import SourceSpec
from pea.errors import PeaError
from pea.evaluate.config import EvalConfig, GateConfig
from pea.presets import registry as presets
from pea.train.config import TrainConfig

# the preset names as a Literal, so the flow's parameter schema lists them and a server refuses any other
PresetName = Literal[tuple(presets())]
DEFAULT_PRESET = "toy"  # the local default: the toy world measures quality on a CPU without downloads


class DataConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # None: the preset's default (built-locally presets render toy data; real ones use what is harvested)
    sources: tuple[SourceSpec, ...] | None = None
    toy_samples: int = Field(4000, gt=0)  # toy-world samples rendered as the default source
    cache_batch: int = Field(32, gt=0)  # samples per encoder batch in the cache stage (on a GPU, at most what fits)
    cache_text: bool = False  # cache the text encoders' outputs too (~6x the bytes; pea.features says why not)


class RunConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: PresetName = DEFAULT_PRESET  # a base-model preset (`pea presets`)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def build_run_config(path: Path | None = None, overrides: dict | None = None) -> RunConfig:
    """The run config from a YAML file (or the defaults) with dotted overrides such as {"train.steps": 50}
    applied on top; None values in `overrides` are left out (a flag the user did not give)."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise PeaError(f"cannot read run config {path} ({e})", "give a readable YAML file (see `pea config --show`)") from e
        if not isinstance(raw, dict):
            raise PeaError(f"run config {path} does not hold a mapping of fields", "see `pea config --show`")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set(raw, dotted, value)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        where = f"run config {path}" if path else "run config"
        raise PeaError(f"{where}: {field} {err.get('input')!r} is not valid ({err['msg']})",
                       "correct that field (`pea config --show` prints every field with its default)") from e
