import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

from pea.errors import PeaError
from pea.models.loading import load_pipeline, pipeline_source
from pea.presets import get_preset, registry
from pea.resources import resource_path


def _meta_unet_params(name: str) -> int:
    config = json.loads(resource_path("configs", name, "unet.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    return sum(p.numel() for p in unet.parameters())


def test_real_sdxl_unet_architecture_from_the_shipped_config():
    assert round(_meta_unet_params("sdxl") / 1e9, 3) == 2.567


def test_real_sd15_unet_architecture_from_the_shipped_config():
    assert round(_meta_unet_params("sd15") / 1e6, 1) == 859.5


def test_real_presets_name_hub_ids():
    for name in ("sd15", "sdxl", "ssd-1b"):
        preset = get_preset(name)
        assert "/" in preset.model_id and not preset.is_built_locally
        assert pipeline_source(preset, model_cache=None) == preset.model_id


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(PeaError) as e:
        get_preset("sd3")
    assert "tiny-sdxl" in e.value.fix and "sdxl" in e.value.fix


def test_tiny_sdxl_has_sdxls_conditioning_structure(model_cache):
    preset = get_preset("tiny-sdxl")
    pipe = load_pipeline(preset, model_cache)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    embeds, _, pooled, _ = pipe.encode_prompt("a red circle", device="cpu", do_classifier_free_guidance=False)
    # penultimate states of both encoders concatenated; pooled from the second encoder's projection
    assert embeds.shape == (1, 77, preset.context_dim)
    assert preset.context_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pooled.shape == (1, preset.pooled_dim)
    # time ids: 6 ids of addition_time_embed_dim each, plus the pooled embedding
    unet = pipe.unet.config
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + preset.pooled_dim


def test_tiny_sd15_has_sd15s_conditioning_structure(model_cache):
    preset = get_preset("tiny-sd15")
    pipe = load_pipeline(preset, model_cache)
    assert isinstance(pipe, StableDiffusionPipeline)
    embeds, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    assert embeds.shape == (1, 77, preset.context_dim)
    assert pipe.unet.config.cross_attention_dim == preset.context_dim


def test_tiny_builds_are_deterministic_and_reused(model_cache, tmp_path):
    preset = get_preset("tiny-sd15")
    first = pipeline_source(preset, model_cache)
    pipeline_source(preset, tmp_path)
    a = (model_cache / "tiny-sd15" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    b = (tmp_path / "tiny-sd15" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b
    assert pipeline_source(preset, model_cache) == first
    assert not list(model_cache.glob(".*tmp*")) and not list(tmp_path.glob(".*tmp*"))


def test_every_preset_entry_is_consistent():
    for preset in registry().values():
        assert (preset.model_id is None) != (preset.build is None), preset.name
        assert (preset.pooled_dim is not None) == (preset.family == "sdxl"), preset.name
