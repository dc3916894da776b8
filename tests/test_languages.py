import pytest

from pea.errors import PeaError
from pea.languages import get_language, registry

PAPER_LANGUAGES = ["zh", "ru", "ja", "ko", "it"]


def test_registry_has_the_papers_languages_and_a_multilingual_option():
    assert set(PAPER_LANGUAGES + ["multilingual"]) <= set(registry())


@pytest.mark.parametrize("code", PAPER_LANGUAGES + ["multilingual"])
def test_entry_names_every_model_the_pipeline_needs(code):
    lang = get_language(code)
    assert lang.student_encoder.loader.startswith("transformers:")
    assert lang.student_encoder.max_tokens > 0 and lang.student_encoder.hidden_size > 0
    assert lang.clipscore.id and lang.translation.id and lang.translation.code
    assert set(lang.buckets) == {"sdxl", "sd15"}
    assert all(side % 64 == 0 for side in lang.buckets.values())


def test_a_replaced_paper_encoder_says_why():
    for lang in registry().values():
        if lang.paper_encoder:
            assert lang.paper_encoder.id != lang.student_encoder.id
            assert "load" in lang.paper_encoder.why_not


def test_unknown_code_lists_the_valid_ones():
    with pytest.raises(PeaError) as e:
        get_language("xx")
    assert "'xx'" in e.value.problem
    for code in PAPER_LANGUAGES:
        assert code in e.value.fix
