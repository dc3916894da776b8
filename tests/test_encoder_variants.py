"""The encoder variants (paper Table 1: Multilingual-CLIP, MulT5): their registry entries, and their tiny stand-ins
(pea/models/tiny_encoders.py, the real repos' layouts) loaded through the same load_text_encoder a GPU run uses."""

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pea.errors import PeaError
from pea.languages import encoder_variant, get_language, registry
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_weights_strictly, model_source
from pea.presets import get_preset

VARIANTS = ("multilingual-clip", "mt5")
PROMPTS = ["빨간 원이 있는 그림", "一个红色的圆", "красный круг на синем фоне", "a red circle"]


def tiny_spec(variant: str, **update):
    return get_preset("tiny-sdxl").student_for(get_language("ko"), variant).model_copy(update=update)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_standin_gives_token_states_of_its_width(model_cache, variant):
    spec = tiny_spec(variant)
    out = load_text_encoder(spec, model_cache).encode(PROMPTS)
    assert out.states.shape == (len(PROMPTS), spec.max_tokens, spec.hidden_size)
    assert out.mask.shape == (len(PROMPTS), spec.max_tokens)
    lengths = out.mask.sum(1)
    assert (lengths > 2).all() and (lengths < spec.max_tokens).all() and not any(out.truncated)
    flat = out.states.flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0, "two prompts encoded alike"


def test_open_clip_variant_reads_xlmr_weights_from_the_safetensors(model_cache):
    """The text transformer's weights are the checkpoint's `text.transformer.*`, not open_clip's random init."""
    spec = tiny_spec("multilingual-clip")
    enc = load_text_encoder(spec, model_cache)
    saved = load_file(f"{model_source(spec.id, model_cache)}/open_clip_model.safetensors")
    loaded = enc.model.state_dict()
    text = {k.removeprefix("text.transformer."): v for k, v in saved.items()
            if k.startswith("text.transformer.") and not k.endswith("position_ids")}
    assert text.keys() == loaded.keys()
    assert all(torch.equal(loaded[k], v) for k, v in text.items())
    # the states are XLM-R's (32 wide), not the CLIP embedding's (24): the spec's width is the right one
    assert enc.model.config.hidden_size == spec.hidden_size == 32


def test_mt5_variant_reads_the_encoder_half_without_a_report(model_cache, caplog):
    spec = tiny_spec("mt5")
    with caplog.at_level(logging.WARNING):
        enc = load_text_encoder(spec, model_cache)
    saved = torch.load(f"{model_source(spec.id, model_cache)}/pytorch_model.bin", weights_only=True)
    loaded = enc.model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.items())
    assert any(k.startswith("decoder.") for k in saved) and "lm_head.weight" in saved
    assert "LOAD REPORT" not in caplog.text and "UNEXPECTED" not in caplog.text


@pytest.mark.parametrize("variant, width", [("multilingual-clip", 32), ("mt5", 32)])
def test_variant_width_is_checked_against_the_spec(model_cache, variant, width):
    with pytest.raises(PeaError, match=f"gives {width}-d states") as err:
        load_text_encoder(tiny_spec(variant, hidden_size=width + 1), model_cache)
    assert err.value.fix == f"set hidden_size: {width} in the language or preset entry"


@pytest.fixture
def mt5_copy(model_cache, tmp_path):
    folder = tmp_path / "mt5"
    shutil.copytree(model_source("tiny-mt5", model_cache), folder)
    return folder


def test_mt5_missing_an_encoder_weight_is_refused(mt5_copy, caplog):
    from transformers import MT5EncoderModel

    state = torch.load(mt5_copy / "pytorch_model.bin", weights_only=True)
    del state["encoder.block.1.layer.0.SelfAttention.q.weight"]
    torch.save(state, mt5_copy / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING), pytest.raises(PeaError, match=r"1 missing weights \(e\.g\. encoder\.block"):
        load_weights_strictly(MT5EncoderModel, str(mt5_copy))
    assert "LOAD REPORT" in caplog.text, "a refused load shows transformers' table with its error"


def test_decoder_half_is_only_forgiven_to_an_encoder(mt5_copy):
    """A whole-model class on the same checkpoint reads the decoder too: a weight missing there is refused."""
    from transformers import MT5ForConditionalGeneration

    state = torch.load(mt5_copy / "pytorch_model.bin", weights_only=True)
    del state["decoder.block.0.layer.1.EncDecAttention.q.weight"]
    torch.save(state, mt5_copy / "pytorch_model.bin")
    with pytest.raises(PeaError, match="missing"):
        load_weights_strictly(MT5ForConditionalGeneration, str(mt5_copy))


@pytest.fixture
def clip_copy(model_cache, tmp_path):
    folder = tmp_path / "xlmr-clip"
    shutil.copytree(model_source("tiny-xlmr-clip", model_cache), folder)
    return folder


def test_pickle_only_open_clip_folder_is_refused(model_cache, clip_copy):
    """The real repo's main branch: open_clip_pytorch_model.bin and no safetensors."""
    (clip_copy / "open_clip_model.safetensors").unlink()
    with pytest.raises(PeaError, match="only the pickle open_clip_pytorch_model.bin") as err:
        load_text_encoder(tiny_spec("multilingual-clip", id=str(clip_copy)), model_cache)
    assert "safetensors" in err.value.fix


def test_open_clip_checkpoint_missing_a_text_weight_is_refused(model_cache, clip_copy):
    path = clip_copy / "open_clip_model.safetensors"
    state = load_file(path)
    del state["text.transformer.encoder.layer.1.attention.self.query.weight"]
    save_file(state, path)
    with pytest.raises(PeaError, match=r"does not fit open_clip 'pea-tiny-xlmr-ViT'.*Missing key.*query\.weight"):
        load_text_encoder(tiny_spec("multilingual-clip", id=str(clip_copy)), model_cache)


def test_every_language_offers_the_papers_variants():
    for lang in registry().values():
        clip, mt5 = (encoder_variant(lang, name) for name in VARIANTS)
        assert (clip.id, clip.loader, clip.hidden_size, clip.max_tokens) == (
            "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k", "open_clip:xlm-roberta-large-ViT-H-14",
            1024, 77)
        assert (mt5.id, mt5.loader, mt5.tokenizer, mt5.hidden_size) == (
            "google/mt5-xl", "transformers:MT5EncoderModel", "transformers:T5Tokenizer", 2048)


def test_real_preset_picks_the_languages_variant_and_keeps_its_default():
    zh, sdxl = get_language("zh"), get_preset("sdxl")
    assert sdxl.student_for(zh).id == "OFA-Sys/chinese-clip-vit-huge-patch14"
    assert sdxl.student_for(zh, "mt5") == encoder_variant(zh, "mt5")


@pytest.mark.parametrize("preset", ["tiny-sd15", "tiny-sdxl"])
def test_tiny_presets_stand_in_for_every_variant(preset):
    tiny = get_preset(preset)
    assert set(tiny.encoder_variants) == set(get_language("ko").encoder_variants) == set(VARIANTS)
    assert tiny.student_for(get_language("ko")).id == "tiny-byt5"


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(PeaError, match="language 'ko' has no encoder variant 'xlm'") as err:
        get_preset("sdxl").student_for(get_language("ko"), "xlm")
    assert err.value.fix == "use one of: multilingual-clip, mt5"
    with pytest.raises(PeaError, match="preset 'toy' has no encoder variant 'mt5'"):
        get_preset("toy").student_for(get_language("ko"), "mt5")
