"""The metric scorers load their models the way the real ones load (transformers, open_clip, the
ImageReward checkpoint format) and score what they are given."""

import logging
import re

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pea.errors import PeaError
from pea.evaluate.config import EvalModels
from pea.evaluate.image_reward import POSITION_IDS, ImageRewardScorer, vision_key
from pea.evaluate.metrics import CLIPScore, OpenCLIPScore, load_openclip_tiny, load_scorers
from pea.languages import ModelRef, get_language
from pea.models.tiny import ensure_built
from pea.models.tiny_encoders import save_tiny_chinese_clip
from pea.models.tiny_metrics import save_tiny_openclip

TINY = EvalModels(clipscore_native=ModelRef(id="tiny-clip", loader="transformers:CLIPModel"),
                  clipscore_en="tiny-openclip", pickscore="tiny-clip", pickscore_processor="tiny-clip",
                  image_reward="tiny-imagereward", image_reward_tokenizer="tiny-imagereward")
RED, BLUE = Image.new("RGB", (48, 40), (220, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 220))


@pytest.fixture(scope="module")
def scorers(model_cache):
    return {s.name: s for s in load_scorers(TINY, get_language("ko").clipscore, model_cache)}


def test_every_paper_metric_is_loaded_with_the_side_of_the_prompt_it_reads(scorers):
    assert {n: s.text for n, s in scorers.items()} == {
        "clipscore_native": "native", "clipscore_en": "english", "image_reward": "english", "pickscore": "english"}
    for scorer in scorers.values():
        scores = scorer([RED, BLUE], ["빨간 원", "a blue square"])
        assert len(scores) == 2 and all(isinstance(x, float) for x in scores)
        assert scores == scorer([RED, BLUE], ["빨간 원", "a blue square"])  # deterministic (eval mode)


def test_clipscore_is_100_times_the_clamped_cosine_of_the_models_own_features(scorers):
    clip: CLIPScore = scorers["clipscore_native"]
    text = clip.processor(text=["a red circle"], return_tensors="pt", padding=True)
    pixels = clip.processor(images=[RED], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        t = clip.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        i = clip.model.get_image_features(pixel_values=pixels)
    t, i = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (t, i))
    expected = max(float(torch.nn.functional.cosine_similarity(i, t)[0]), 0.0) * 100
    assert clip([RED], ["a red circle"])[0] == pytest.approx(expected, rel=1e-5)
    assert 0 <= clip([BLUE], ["x"])[0] <= 100


def test_chinese_clip_reads_a_long_prompt_as_its_first_52_tokens(tmp_path, scorers):
    save_tiny_chinese_clip(tmp_path)
    clip = CLIPScore.load(ModelRef(id=str(tmp_path), loader="transformers:ChineseCLIPModel"), str(tmp_path))
    assert clip.model.config.text_config.max_position_embeddings == 512  # BERT's positions, not the trained length
    seen = []
    features = clip.model.get_text_features
    clip.model.get_text_features = lambda **kw: seen.append(kw["input_ids"].shape[1]) or features(**kw)
    long = "一个红色的圆在蓝色的方形上" * 12  # 156 characters, one token each
    assert clip([RED], [long]) == clip([RED], [long[:50]])  # [CLS] + 50 characters + [SEP]
    assert seen == [52, 52]
    assert scorers["clipscore_native"].max_tokens == scorers["pickscore"].max_tokens == 77  # CLIP's own length


def test_openclip_reads_the_saved_checkpoint_not_random_weights(model_cache):
    folder = ensure_built("tiny-openclip", model_cache)
    scorer = load_openclip_tiny(folder)
    saved = load_file(folder / "open_clip_model.safetensors")
    for key, value in scorer.model.state_dict().items():
        assert torch.equal(value.cpu(), saved[key]), key


def test_an_openclip_scorer_without_weights_is_an_error_not_a_random_model(model_cache, tmp_path, caplog):
    folder = ensure_built("tiny-openclip", model_cache)
    load_openclip_tiny(folder)  # registers the architecture
    with pytest.raises(RuntimeError, match="could not be loaded"):
        OpenCLIPScore.load(next(folder.glob("*.json")).stem, "")  # no weights named: open_clip would only warn
    with caplog.at_level(logging.WARNING):
        save_tiny_openclip(tmp_path / "rebuilt")  # building the stand-in from a seed is random on purpose
    assert (tmp_path / "rebuilt" / "open_clip_model.safetensors").is_file()
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]


def test_image_reward_maps_every_checkpoint_tensor_onto_blip(model_cache):
    folder = ensure_built("tiny-imagereward", model_cache)
    scorer = ImageRewardScorer.load(str(folder), str(folder))
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    vision = scorer.model.vision.state_dict()
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            assert torch.equal(vision[vision_key(key.removeprefix("blip.visual_encoder."))], value), key
    assert torch.equal(scorer.model.text.state_dict()["encoder.layer.0.crossattention.self.query.weight"],
                       state["blip.text_encoder.encoder.layer.0.crossattention.self.query.weight"])
    assert torch.equal(scorer.model.head[7].weight, state["mlp.layers.7.weight"])
    a, b = scorer([RED, RED], ["a red circle", "zzz qqq"])
    assert a != b  # the text reaches the reward through cross-attention


def test_image_reward_refuses_a_checkpoint_that_would_run_code(tmp_path, model_cache):
    folder = ensure_built("tiny-imagereward", model_cache)
    for name in ("med_config.json", "vocab.txt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    torch.save({"blip.visual_encoder.cls_token": torch.zeros(1), "payload": Image.new("RGB", (1, 1))},
               tmp_path / "ImageReward.pt")
    with pytest.raises(PeaError, match="not a tensors-only checkpoint"):
        ImageRewardScorer.load(str(tmp_path), str(folder))


def _edited_image_reward(tmp_path, folder, edit) -> str:
    """A copy of the tiny ImageReward folder whose checkpoint went through `edit(state)`."""
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "ImageReward.pt")
    (tmp_path / "med_config.json").write_bytes((folder / "med_config.json").read_bytes())
    return str(tmp_path)


def test_image_reward_loads_the_published_key_set_with_its_position_ids_buffer(model_cache):
    folder = ensure_built("tiny-imagereward", model_cache)
    state = torch.load(folder / "ImageReward.pt", weights_only=True)
    # as upstream's BLIP saves them: BERT's persistent position ids, the unused contrastive projections
    assert torch.equal(state[POSITION_IDS], torch.arange(64).unsqueeze(0))
    assert {"blip.vision_proj.weight", "blip.text_proj.weight"} <= set(state)
    assert ImageRewardScorer.load(str(folder), str(folder))([RED], ["a red circle"])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"blip.itm_head.weight": torch.zeros(2, 32)}), "unknown keys: blip.itm_head.weight"),
    (lambda s: s.update({"blip.text_encoder.encoder.layer.0.extra.weight": torch.zeros(1)}),
     "text weights do not fit (unexpected encoder.layer.0.extra.weight)"),
    (lambda s: s.pop("blip.text_encoder.encoder.layer.0.output.dense.weight"),
     "text weights do not fit (missing encoder.layer.0.output.dense.weight)"),
    (lambda s: s.pop("mlp.layers.7.bias"), "head weights do not fit (missing 7.bias)"),
    (lambda s: s.update({POSITION_IDS: torch.arange(64).flip(0).unsqueeze(0)}), "position_ids is not 0..63"),
])
def test_image_reward_refuses_any_other_key_and_names_it(tmp_path, model_cache, edit, message):
    folder = ensure_built("tiny-imagereward", model_cache)
    with pytest.raises(PeaError, match=re.escape(message)) as error:
        ImageRewardScorer.load(_edited_image_reward(tmp_path, folder, edit), str(folder))
    assert "\n" not in str(error.value)
