import random

import pytest

from pea.toy.judge import CHANCE, to_tensor, train_judge
from pea.toy.world import (CULTURE, LANGS, WORDS, Scene, caption, culture_scenes, dictionary_english,
                           general_scenes, render, sample_scenes)


@pytest.mark.parametrize("lang", ["en", *LANGS])
def test_every_scene_has_its_own_caption_in_every_language(lang):
    captions = [caption(s, lang) for s in general_scenes()]
    assert len(set(captions)) == len(captions) == 72
    shapes, colors, backgrounds = WORDS[lang]
    red_circle = caption(Scene("circle", "red", "grey"), lang)
    assert shapes["circle"] in red_circle and backgrounds["grey"] in red_circle


def test_word_order_and_agreement_follow_each_language():
    scene = Scene("cross", "red", "grey")
    assert caption(scene, "ko") == "회색 배경의 빨간 십자가"
    assert caption(scene, "ja") == "灰色の背景の赤い十字"
    assert caption(scene, "zh") == "灰色背景上的红色十字"
    assert caption(scene, "ru") == "красный крест на сером фоне"  # prepositional case
    assert caption(scene, "it") == "una croce rossa su sfondo grigio"  # feminine noun, agreeing adjective


@pytest.mark.parametrize("lang", LANGS)
def test_culture_words_lose_their_colour_in_translation(lang):
    for scene in culture_scenes(lang):
        assert scene.culture_word in caption(scene, lang)
        english = dictionary_english(scene, lang)
        assert scene.color not in english and scene.shape in english
    assert len(CULTURE[lang]) >= 2


def test_rendering_is_deterministic_for_a_seed():
    scenes = sample_scenes(8, random.Random(1), general_scenes())
    a = to_tensor([render(s, random.Random(i)) for i, s in enumerate(scenes)])
    b = to_tensor([render(s, random.Random(i)) for i, s in enumerate(scenes)])
    assert (a == b).all() and a.shape == (8, 3, 32, 32)


@pytest.mark.slow
def test_the_judge_tells_faithful_images_from_mismatched_ones():
    judge = train_judge(seed=0, n=1500, steps=200)
    rng = random.Random(7)
    scenes = sample_scenes(300, rng, general_scenes())
    images = to_tensor([render(s, rng) for s in scenes])
    faithful = judge.score(images, scenes).mean().item()
    mismatched = judge.score(images, scenes[1:] + scenes[:1]).mean().item()
    assert faithful > 0.9
    assert abs(mismatched - CHANCE) < 0.1
