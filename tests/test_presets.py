import json

import diffusers
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

from data_helpers import make_folder
from pea.data.sources import SourceSpec
from pea.data.translate import translate
from pea.errors import PeaError
from pea.languages import get_language
from pea.models.loading import load_frozen_pipeline, load_pipeline, pipeline_source
from pea.models.precision import cache_batch_size, frozen_dtype, vae_dtype
from pea.models.tiny import REAL_PIPELINES, make_pipeline
from pea.presets import get_preset, registry
from pea.profiles import load_profile
from pea.resources import resource_path
from pea.stages import bucket_stage, cache_stage, harvest_stage
from pea.train.config import TrainConfig

TINY_OF_FAMILY = {"sd15": "tiny-sd15", "sdxl": "tiny-sdxl"}


def _real(name: str, file: str) -> dict:
    return json.loads(resource_path("configs", name, file).read_text())


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


def test_the_shipped_sd15_configs_build_the_real_pipeline_in_memory():
    with torch.device("meta"):
        pipe = make_pipeline("sd15")
    assert isinstance(pipe, StableDiffusionPipeline) and type(pipe.scheduler).__name__ == "PNDMScheduler"
    params = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("text_encoder", "vae")}
    assert params == {"text_encoder": 123_060_480, "vae": 83_653_863}  # CLIP ViT-L/14 text; the KL-f8 VAE
    assert pipe.vae.config.scaling_factor == 0.18215
    assert type(pipe.safety_checker).__name__ == "StableDiffusionSafetyChecker"
    assert pipe.safety_checker.vision_model.config.hidden_size == 1024


def _assert_same_layout(pipe, real: str):
    """The loaded pipeline has the real repo's pipeline class, component classes, flags and scheduler."""
    index = _real(real, "model_index.json")
    assert type(pipe).__name__ == index["_class_name"]
    for part, entry in index.items():
        if isinstance(entry, list):
            assert type(getattr(pipe, part)).__name__ == (entry[1] or "NoneType"), part
        elif not part.startswith("_") and entry is not None:
            assert pipe.config[part] == entry, part
    scheduler = _real(real, "scheduler.json")
    from_real = getattr(diffusers, scheduler["_class_name"]).from_config(scheduler).config

    def fields(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert fields(pipe.scheduler.config) == fields(from_real)


@pytest.mark.parametrize("real", REAL_PIPELINES)
def test_a_tiny_pipeline_in_each_real_repos_layout_loads_like_the_real_one(real, model_cache, tmp_path):
    preset = get_preset(real)
    make_pipeline(TINY_OF_FAMILY[preset.family], layout=real).save_pretrained(tmp_path / real)
    pipe = load_pipeline(preset.model_copy(update={"model_id": str(tmp_path / real)}), model_cache)
    _assert_same_layout(pipe, real)


@pytest.mark.parametrize("tiny,real", [("tiny-sd15", "sd15"), ("tiny-sdxl", "sdxl")])
def test_the_tiny_presets_mirror_their_real_repo(tiny, real, model_cache):
    _assert_same_layout(load_pipeline(get_preset(tiny), model_cache), real)


def test_the_real_schedulers_facts():
    assert _real("sd15", "scheduler.json")["skip_prk_steps"] is True
    assert _real("sdxl-turbo", "scheduler.json")["timestep_spacing"] == "trailing"
    for name in ("sdxl", "ssd-1b", "sdxl-turbo"):
        assert _real(name, "model_index.json")["force_zeros_for_empty_prompt"] is True
    assert "text_encoder_2" not in _real("sd15", "model_index.json")


def test_frozen_models_run_in_half_precision_on_a_gpu_and_fp32_on_a_cpu():
    assert frozen_dtype("cpu") == torch.float32
    assert frozen_dtype("cuda") == torch.bfloat16
    assert frozen_dtype("cuda", bf16_supported=False) == torch.float16


def test_only_the_sdxl_vae_that_asks_for_it_stays_fp32_on_a_gpu():
    sdxl = _real("sdxl", "vae.json")
    assert sdxl["force_upcast"] is True
    assert vae_dtype(sdxl, "sdxl", "cuda") == torch.float32
    assert vae_dtype({**sdxl, "force_upcast": False}, "sdxl", "cuda") == torch.bfloat16  # the fp16-fix VAE
    sd15 = AutoencoderKL.from_config(_real("sd15", "vae.json")).config  # diffusers defaults force_upcast to True
    assert sd15.force_upcast and vae_dtype(sd15, "sd15", "cuda", bf16_supported=False) == torch.float16
    assert vae_dtype(sdxl, "sdxl", "cpu") == torch.float32


def test_the_cache_batch_fits_1024px_on_a_40gb_gpu():
    gpu = 40 * 2**30
    fp32 = cache_batch_size(1024, torch.float32, gpu)
    assert 4 <= fp32 < 32  # the old fixed batch of 32 needs ~100 GB of VAE activations at 1024 px in fp32
    assert cache_batch_size(1024, torch.bfloat16, gpu) >= 2 * fp32 - 1
    assert cache_batch_size(512, torch.float32, gpu) > fp32
    assert cache_batch_size(4096, torch.float32, gpu) == 1


def test_on_a_cpu_the_frozen_pipeline_stays_fp32(model_cache):
    pipe = load_frozen_pipeline(get_preset("tiny-sdxl"), model_cache, "cpu")
    params = [p for c in pipe.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters()]
    assert {p.dtype for p in params} == {torch.float32} and {p.device.type for p in params} == {"cpu"}
    assert not any(p.requires_grad for p in params)


def test_with_gpu_dtypes_the_fp32_vae_is_read_in_fp32_never_rounded_through_half(model_cache, monkeypatch):
    """The GPU's choice (bf16 models, fp32 SDXL VAE) made on a CPU: the VAE's weights must be the stored
    fp32 ones bit for bit, the rest bf16 (a pipeline-wide .to(bf16) followed by an upcast loses VAE bits)."""
    monkeypatch.setattr("pea.models.precision.frozen_dtype", lambda *a: torch.bfloat16)
    stored = AutoencoderKL.from_pretrained(pipeline_source(get_preset("tiny-sdxl"), model_cache), subfolder="vae")
    pipe = load_frozen_pipeline(get_preset("tiny-sdxl"), model_cache, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(pipe.vae.state_dict().values(), stored.state_dict().values()))
    assert pipe.vae.dtype == torch.float32
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.text_encoder_2.dtype == torch.bfloat16


def test_the_cache_stage_on_a_cpu_keeps_fp32_features_and_the_given_batch(tmp_path, monkeypatch):
    ko = get_language("ko")
    env = {"PEA_DATA_DIR": str(tmp_path / "data")}
    profile, tiny = load_profile("local", env=env, cwd=tmp_path), get_preset("tiny-sd15")
    harvest_stage(profile, ko, SourceSpec(name="local", kind="folder", uri=str(make_folder(tmp_path / "imgs", n=6))))
    translate(profile.storage(), "ko", "kor_Hang", "none", lambda: None)
    bucket_stage(profile, ko, tiny)
    calls = []
    monkeypatch.setattr("pea.data.cache.cache_features", lambda *a, **kw: calls.append(a) or {})
    cache_stage(profile, ko, tiny, batch_size=3)
    load, dtype = calls[0][3], calls[0][5]
    assert load().batch_size == 3 and dtype == torch.float32


def test_sdxl_at_1024px_trains_with_gradient_checkpointing_by_default_and_a_run_can_say_otherwise():
    """Measured on an H100 (pea.presets.TrainDefaults): the default batch of 16 needs ~106 GB without it."""
    cfg = TrainConfig()
    assert cfg.for_preset(get_preset("sdxl")).gradient_checkpointing is True
    assert cfg.for_preset(get_preset("ssd-1b")).gradient_checkpointing is True
    assert cfg.for_preset(get_preset("sd15")).gradient_checkpointing is False
    off = TrainConfig(gradient_checkpointing=False).for_preset(get_preset("sdxl"))
    assert off.gradient_checkpointing is False
