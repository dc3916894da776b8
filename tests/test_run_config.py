"""The run config: one typed object from defaults, a YAML file and flags; what a resumed run must match."""

import pytest
import yaml

from pea.errors import PeaError
from pea.run_config import RunConfig, build_run_config
from pea.storage import Storage
from pea.train.config import TrainConfig
from pea.train.run import _same_config


def test_a_file_and_flags_build_one_config_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny-sdxl\ntrain:\n  method: ukd\n  steps: 50\neval:\n  steps: 3\n")
    run = build_run_config(path, {"train.steps": 80, "eval.max_prompts": None})
    assert (run.preset, run.train.method, run.train.steps, run.eval.steps) == ("tiny-sdxl", "ukd", 80, 3)
    assert run.eval.max_prompts is None and run.gate == RunConfig().gate  # untouched sections keep their defaults


@pytest.mark.parametrize("text, words", [
    ("preset: sd3\n", ["preset 'sd3' is not valid", "sdxl"]),
    ("train:\n  method: kd\n", ["train.method 'kd'", "ukd"]),
    ("train:\n  steps: 0\n", ["train.steps 0", "greater than 0"]),
    ("trian:\n  steps: 5\n", ["trian", "Extra inputs"]),
    ("- a list\n", ["does not hold a mapping"]),
])
def test_a_bad_file_is_one_line_naming_the_field(tmp_path, text, words):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(PeaError) as e:
        build_run_config(path)
    assert all(w in str(e.value) for w in words) and "\n" not in e.value.problem


def test_pea_config_show_prints_a_file_that_builds_the_same_config(tmp_path, pea_cli):
    out = pea_cli("config", "--show", "--preset", "tiny-sdxl")
    assert out.code == 0, out.err
    shown = yaml.safe_load(out.out)
    assert shown["preset"] == "tiny-sdxl" and shown["train"]["steps"] == TrainConfig().steps
    path = tmp_path / "run.yaml"
    path.write_text(out.out)
    assert build_run_config(path) == build_run_config(None, {"preset": "tiny-sdxl"})


def test_switches_are_not_part_of_the_training_config():
    assert not {"progress", "fault_at_step"} & set(TrainConfig.model_fields)
    assert "run_name" not in TrainConfig(run_name="a").identity()


def test_a_resumed_run_must_keep_the_config_it_started_with(tmp_path):
    storage = Storage(str(tmp_path))
    started = {"lang": "ko", "train": TrainConfig(lr=1e-3).identity()}
    _same_config(storage, "ko", "run-a", started, override=False)
    _same_config(storage, "ko", "run-a", started, override=False)  # the same config resumes
    changed = {"lang": "ko", "train": TrainConfig(lr=1e-4).identity()}
    with pytest.raises(PeaError) as e:
        _same_config(storage, "ko", "run-a", changed, override=False)
    assert "run 'run-a' was started with another config (train.lr differ)" in e.value.problem
    _same_config(storage, "ko", "run-a", changed, override=True)  # asked to override: the new config is recorded
    _same_config(storage, "ko", "run-a", changed, override=False)
