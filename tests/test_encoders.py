import logging

import torch

from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.presets import get_preset

PROMPTS = {
    "ko": "빨간 원이 있는 그림",
    "zh": "一个红色的圆",
    "ja": "赤い丸の絵",
    "ru": "красный круг на синем фоне",
    "it": "un cerchio rosso su sfondo blu",
}


def test_tiny_student_reads_every_registered_language(model_cache):
    spec = get_preset("tiny-sdxl").student_for(get_language("ko"))
    enc = load_text_encoder(spec, model_cache)
    out = enc.encode(list(PROMPTS.values()))
    assert out.states.shape == (len(PROMPTS), spec.max_tokens, spec.hidden_size)
    assert not any(out.truncated)
    # every prompt's own bytes, not unknown tokens: five distinct encodings
    lengths = out.mask.sum(1)
    assert all(lengths[i] == len(p.encode()) + 1 for i, p in enumerate(PROMPTS.values()))
    flat = out.states.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0


def test_long_prompt_is_truncated_with_a_warning(model_cache, caplog):
    spec = get_preset("tiny-sdxl").student_for(get_language("ko"))
    enc = load_text_encoder(spec, model_cache)
    with caplog.at_level(logging.WARNING):
        out = enc.encode(["빨간 원 " * 50])
    assert out.truncated == [True]
    assert out.mask.sum() == spec.max_tokens
    assert "truncated" in caplog.text


def test_real_languages_use_their_own_encoder():
    assert get_preset("sdxl").student_for(get_language("zh")).id == "OFA-Sys/chinese-clip-vit-huge-patch14"
