"""The MG/MC prompt sets: complete in every language, and bad files fail with their path and line."""

import pytest

from pea.errors import PeaError
from pea.evaluate.prompts import check_prompt_files, mc_prompts, mg_prompts, prompt_languages, read_tsv


def test_every_language_has_200_mg_and_200_mc_prompts():
    counts = check_prompt_files()
    for lang in ("zh", "ru", "ja", "ko", "it"):
        assert counts[f"mg-{lang}"] == 200 and counts[f"mc-{lang}"] == 200
    assert "multilingual" not in prompt_languages()


def test_mg_is_the_same_prompt_in_every_language_and_mc_is_each_cultures_own():
    ko, zh = mg_prompts("ko"), mg_prompts("zh")
    assert [p.id for p in ko] == [p.id for p in zh] and [p.english for p in ko] == [p.english for p in zh]
    assert ko[0].native != zh[0].native
    assert not {p.native for p in mc_prompts("ko")} & {p.native for p in mc_prompts("ja")}
    kinds = {p.id.split("-")[2] for p in mc_prompts("it")}
    assert kinds == {"food", "architecture", "clothing", "festivals", "places"}


def test_multilingual_takes_every_language_in_turn():
    prompts = mg_prompts("multilingual")
    assert len(prompts) == 200 and prompts[0].native != prompts[1].native
    mc = mc_prompts("multilingual")
    assert len(mc) == 200 and {p.id.split("-")[1] for p in mc} == set(prompt_languages())


def _write(tmp_path, data: bytes):
    path = tmp_path / "mg.tsv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, where, what", [
    (b"id\ten\tko\nmg-1\ta cat\t\xea\xb3\xa0\xec\x96\x91\xec\x9d\xb4\n", ":1", "missing language column(s) zh"),
    (b"id\ten\tko\tzh\nmg-1\ta\tb\tc\nmg-2\ta2\t\xff\xfe\tc2\n", ":3", "not valid UTF-8"),
    (b"id\ten\tko\tzh\nmg-1\ta\tb\tc\n\nmg-2\ta2\tb2\tc2\n", ":3", "empty line"),
    (b"id\ten\tko\tzh\nmg-1\ta\tb\tc\nmg-1\ta2\tb2\tc2\n", ":3", "duplicate id"),
    (b"id\ten\tko\tzh\nmg-1\ta\t \tc\n", ":2", "empty ko"),
    (b"id\ten\tko\tzh\nmg-1\ta\tb\tc\nmg-2\ta\tb2\tc2\n", ":3", "duplicate en prompt (first on line 2)"),
])
def test_a_bad_prompt_file_names_its_line_and_problem(tmp_path, data, where, what):
    path = _write(tmp_path, data)
    with pytest.raises(PeaError) as e:
        read_tsv(path, ["id", "en", "ko", "zh"])
    assert f"{path}{where}" in e.value.problem and what in e.value.problem


def test_the_multilingual_translate_baseline_reads_each_prompt_in_its_own_language(monkeypatch, tmp_path):
    import pea.data.translate
    from pea.evaluate.suites import _machine_translation
    from pea.languages import get_language
    from pea.presets import get_preset

    calls = []

    class FakeTranslator:
        def __init__(self, source):
            pass

        def __call__(self, texts, src, tgt):
            calls.append((src, tgt, len(texts)))
            return [f"{src}:{t}" for t in texts]

    monkeypatch.setattr(pea.data.translate, "Translator", FakeTranslator)
    prompts = mg_prompts("multilingual")[:10]
    out = _machine_translation(get_preset("sdxl"), get_language("multilingual"), tmp_path)(prompts)
    codes = {get_language(p.lang).translation.code for p in prompts}
    assert {src for src, _, _ in calls} == codes and len(codes) == 5 and "eng_Latn" not in codes
    assert all(o == f"{get_language(p.lang).translation.code}:{p.native}" for o, p in zip(out, prompts))
