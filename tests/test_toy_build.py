"""A small toy world builds, loads through the preset's own paths, is cached by digest and rebuilds bit for bit."""

import pytest
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.presets import get_preset
from pea.toy.build import ToyConfig, build_toy, digest, ensure_toy, load_judge

SMALL = ToyConfig(images=256, batch=16, vae_steps=5, teacher_steps=5, student_steps=5, judge_steps=5)

pytestmark = pytest.mark.slow


def test_a_small_world_loads_through_the_toy_presets_paths(tmp_path, monkeypatch):
    import pea.models.loading as loading

    folder = ensure_toy(tmp_path, SMALL)
    assert folder.name == f"toy-{digest(SMALL)}"
    monkeypatch.setattr(loading, "_built", lambda name, cache: folder / (
        "teacher" if name == "toy" else f"student-{name.removeprefix('toy-student-')}"))
    preset = get_preset("toy")
    pipe = load_pipeline(preset, tmp_path)
    assert isinstance(pipe, StableDiffusionPipeline) and pipe.unet.config.cross_attention_dim == preset.context_dim
    for lang in ("ko", "zh", "ja", "ru", "it"):
        student = load_text_encoder(preset.student_for(get_language(lang)), tmp_path)
        assert student.encode(["x"]).states.shape[-1] == 64
    assert load_judge(folder).score is not None
    mtime = (folder / "config.json").stat().st_mtime_ns
    assert ensure_toy(tmp_path, SMALL) == folder and (folder / "config.json").stat().st_mtime_ns == mtime


def test_the_build_is_bit_for_bit_repeatable(tmp_path):
    a = build_toy(tmp_path / "a", SMALL)
    b = build_toy(tmp_path / "b", SMALL)
    for part in ("teacher/unet/diffusion_pytorch_model.safetensors", "teacher/text_encoder/model.safetensors",
                 "student-ko/model.safetensors", "judge.safetensors"):
        wa, wb = load_file(a / part), load_file(b / part)
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), part


def test_the_digest_follows_the_config():
    assert digest(SMALL) != digest(SMALL.model_copy(update={"seed": 1}))
