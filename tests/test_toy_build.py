"""A small toy world builds, loads through the preset's own paths, is cached by digest and rebuilds bit for bit."""

import io
import random

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from safetensors.torch import load_file

from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.presets import get_preset
from pea.progress import stage_line
from pea.toy.build import (MULTILINGUAL_STEPS, ToyConfig, build_toy, digest, ensure_student, ensure_toy, load_judge,
                           token_contrastive, train_student)
from pea.toy.judge import to_tensor
from pea.toy.world import general_scenes, render

SMALL = ToyConfig(images=256, batch=16, vae_steps=5, teacher_steps=5, student_steps=5, judge_steps=5)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    """The small world built once, by digest, into a model cache of its own: (cache, folder)."""
    cache = tmp_path_factory.mktemp("models")
    return cache, ensure_toy(cache, SMALL)


def test_a_small_world_loads_through_the_toy_presets_paths(small_world, monkeypatch):
    """The toy teacher is laid out as the real SDXL repo: its pipeline class, Euler scheduler, zero null
    conditioning, pooled width and time-id embedding; students are built on first use, per language."""
    import pea.toy.build as build

    cache, folder = small_world
    assert folder.name == f"toy-{digest(SMALL)}"
    monkeypatch.setattr(build.ensure_toy, "__defaults__", (SMALL,))  # the preset's world: this small one
    preset = get_preset("toy")
    pipe = load_pipeline(preset, cache)
    assert isinstance(pipe, StableDiffusionXLPipeline) and isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.config.force_zeros_for_empty_prompt and pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == preset.context_dim
    assert pipe.text_encoder_2.config.projection_dim == preset.pooled_dim
    assert not (folder / "student-zh").exists()
    for lang in ("ko", "zh", "ja", "ru", "it", "multilingual"):
        student = load_text_encoder(preset.student_for(get_language(lang)), cache)
        assert student.encode(["x"]).states.shape[-1] == 64 and (folder / f"student-{lang}").is_dir()
    judge, saved = load_judge(folder), load_file(folder / "judge.safetensors")
    loaded = judge.state_dict()  # the saved judge's weights, every one of them, ready to score (eval mode)
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    scenes = general_scenes()[:8]
    scores = judge.score(to_tensor([render(s, random.Random(i)) for i, s in enumerate(scenes)]), scenes)
    assert not judge.training and scores.shape == (8,) and ((scores > 0) & (scores < 1)).all()
    mtime = (folder / "config.json").stat().st_mtime_ns
    assert ensure_toy(cache, SMALL) == folder and (folder / "config.json").stat().st_mtime_ns == mtime


def test_the_build_is_bit_for_bit_repeatable_and_shows_its_progress(small_world, tmp_path):
    a = small_world[1]  # built by ensure_toy, i.e. build_toy, earlier in this process
    shown = io.StringIO()
    with stage_line(shown, tty=False, every_s=0) as line:
        line.start(1, 1, "toy world")
        b = build_toy(tmp_path / "b", SMALL)
    assert "stage 1/1 toy world  toy world: teacher step 0/5" in shown.getvalue() and "ETA" in shown.getvalue()
    ensure_student(a, "ko"), ensure_student(b, "ko")
    for part in ("teacher/unet/diffusion_pytorch_model.safetensors", "teacher/text_encoder_2/model.safetensors",
                 "student-ko/model.safetensors", "judge.safetensors"):
        wa, wb = load_file(a / part), load_file(b / part)
        assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa), part


def test_the_digest_follows_the_config():
    assert digest(SMALL) != digest(SMALL.model_copy(update={"seed": 1}))


def test_the_multilingual_token_term_asks_every_real_token_for_its_image():
    """token_contrastive is low when each real token points at its own image, high when the tokens point at
    another sample's image; padding (mask 0) never counts."""
    torch.manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    target = torch.eye(4)
    mask = torch.tensor([[1, 1, 0]] * 4, dtype=torch.float32)
    aligned = image.unsqueeze(1).repeat(1, 3, 1)  # (B, L, D): every token carries its sample's image
    aligned[:, 2] = image.roll(1, 0)  # the padding position points elsewhere: masked out
    swapped = image.roll(1, 0).unsqueeze(1).repeat(1, 3, 1)
    low, high = token_contrastive(aligned, mask, image, target), token_contrastive(swapped, mask, image, target)
    assert low < 0.05 and high > 5


@pytest.mark.parametrize("lang, steps", [("ko", 2), ("multilingual", 2 * MULTILINGUAL_STEPS)])
def test_the_multilingual_student_trains_longer_than_a_one_language_one(lang, steps, monkeypatch):
    """It reads six languages with the same model size: MULTILINGUAL_STEPS times the steps (README toy section)."""
    seen = []
    monkeypatch.setattr("pea.toy.build._report", lambda message, fraction: seen.append(message))
    step = torch.optim.AdamW.step
    taken = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: taken.append(1) or step(self, *a, **k))
    train_student(lang, ToyConfig(images=32, batch=4, student_steps=2))
    assert len(taken) == steps and f"student step 0/{steps}," in seen[0]
