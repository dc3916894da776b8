import random

import pytest

from pea.toy.judge import CHANCE, to_tensor, train_judge
from pea.toy.build import STUDENT_TOKENS
from pea.toy.world import (BACKGROUNDS, COLORS, CULTURE, LANGS, MULTILINGUAL, SHAPES, WORDS, Scene, caption,
                           culture_lang, culture_scenes, dictionary_english, general_scenes, prompt_langs, render,
                           sample_scenes, training_scenes, write_folders)


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
        english = dictionary_english(scene)
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


def test_every_caption_fits_the_student_window():
    """ByT5 reads bytes: the longest caption (a Russian one) plus EOS must not be cut."""
    captions = [caption(s, lang) for lang in ["en", *LANGS] for s in general_scenes()]
    captions += [caption(s, culture_lang(s)) for s in culture_scenes(MULTILINGUAL)]
    assert max(len(c.encode()) for c in captions) + 1 <= STUDENT_TOKENS


def test_held_out_scenes_are_new_compositions_of_seen_parts():
    heldout, seen = general_scenes(heldout=True), general_scenes(heldout=False)
    assert len(heldout) == 18 and len(seen) == 54
    for s in heldout:  # every pair of its attributes was seen together
        assert any(t.shape == s.shape and t.color == s.color for t in seen)
        assert any(t.color == s.color and t.background == s.background for t in seen)
    for values, attr in ((SHAPES, "shape"), (COLORS, "color"), (BACKGROUNDS, "background")):
        assert {getattr(s, attr) for s in heldout} == set(values)
    for lang in LANGS:  # one background of every culture item is held out, the others are seen
        for word in CULTURE[lang]:
            split = [s.heldout for s in culture_scenes(lang) if s.culture_word == word]
            assert sorted(split) == [False, False, True]


@pytest.mark.parametrize("lang", [*LANGS, MULTILINGUAL])
def test_training_data_never_holds_a_held_out_caption(lang, tmp_path):
    write_folders(tmp_path / "parallel", tmp_path / "culture", lang, 400, 0.15, seed=0)
    texts = {p.read_text(encoding="utf-8") for p in tmp_path.rglob("*.txt")}
    native = "en" if lang == MULTILINGUAL else lang
    heldout = {caption(s, code) for s in general_scenes(heldout=True) for code in ("en", native)}
    heldout |= {caption(s, culture_lang(s)) for s in culture_scenes(MULTILINGUAL, heldout=True)}
    assert texts and not texts & heldout
    culture = list((tmp_path / "culture").glob("*.txt"))
    assert (len(culture) == 0) == (lang == MULTILINGUAL)  # the multilingual adapter learns from English only
    assert not any(s.heldout for s in training_scenes(lang, 400, 0.15, random.Random(0)))


def test_multilingual_prompts_take_the_languages_in_turn():
    scenes = general_scenes(heldout=True)[:5] + culture_scenes("ja", heldout=True)
    langs = prompt_langs(MULTILINGUAL, scenes)
    assert langs[:5] == LANGS and set(langs[5:]) == {"ja"}
    assert prompt_langs("ko", scenes) == ["ko"] * len(scenes)
