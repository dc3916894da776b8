"""The PEA pipeline drives standard diffusers pipelines, so every plug-in path keeps working."""

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    LCMScheduler,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from pea.adapter import AdapterConfig, PEAAdapter
from pea.conditioning import StudentConditioner, TeacherConditioner
from pea.errors import PeaError
from pea.inference import PEAPipeline
from pea.kd_types import Conditioning
from pea.languages import EncoderSpec, get_language
from pea.models.encoders import TextEncoder
from pea.models.loading import load_pipeline, pipeline_source
from pea.presets import get_preset

KO = get_language("ko")
STEPS = dict(num_inference_steps=3, output_type="np")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class IdentityAdapter(torch.nn.Module):
    def forward(self, states, mask):
        return Conditioning(states)


def test_parity_with_diffusers_sd15_student_is_the_teachers_encoder(model_cache):
    pipe = load_pipeline(get_preset("tiny-sd15"), model_cache)
    spec = EncoderSpec(id="teacher", loader="transformers:CLIPTextModel", tokenizer="transformers:CLIPTokenizer",
                       hidden_size=pipe.text_encoder.config.hidden_size, max_tokens=77, use_attention_mask=False)
    # zero_null=False: SD1.5's unconditional branch is the encoded empty prompt
    pea = PEAPipeline(pipe, StudentConditioner(TextEncoder(spec, pipe.tokenizer, pipe.text_encoder), IdentityAdapter(), False))
    ours = pea("a red circle", generator=_gen(), **STEPS).images
    theirs = pipe("a red circle", generator=_gen(), **STEPS).images
    assert np.array_equal(ours, theirs)


def test_parity_with_diffusers_sdxl_teacher_encoders_with_identity(model_cache):
    pipe = load_pipeline(get_preset("tiny-sdxl"), model_cache)
    pea = PEAPipeline(pipe, TeacherConditioner(pipe))
    ours = pea("a red circle", generator=_gen(), **STEPS).images
    theirs = pipe("a red circle", generator=_gen(), **STEPS).images
    assert np.array_equal(ours, theirs)
    ours = pea("a red circle", negative_prompt="blurry", generator=_gen(), **STEPS).images
    theirs = pipe("a red circle", negative_prompt="blurry", generator=_gen(), **STEPS).images
    assert np.array_equal(ours, theirs)


@pytest.fixture(scope="module")
def sdxl(model_cache, tmp_path_factory):
    preset = get_preset("tiny-sdxl")
    spec = preset.student_for(KO)
    torch.manual_seed(0)
    adapter_dir = PEAAdapter(AdapterConfig(input_dim=spec.hidden_size, context_dim=preset.context_dim,
                                           pooled_dim=preset.pooled_dim, language="ko",
                                           student_encoder=spec.id)).save(tmp_path_factory.mktemp("adapter"))
    return preset, adapter_dir, PEAPipeline.from_preset(adapter_dir, KO, preset, model_cache)


def test_prompt_embeds_come_from_the_native_prompt(sdxl):
    pea = sdxl[2]
    a = pea("빨간 원", generator=_gen(), **STEPS).images
    b = pea("파란 사각형", generator=_gen(), **STEPS).images
    assert a.shape == (1, 32, 32, 3) and np.isfinite(a).all()
    assert not np.array_equal(a, b)


def test_lora_plugs_in(sdxl, model_cache, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    preset, adapter_dir, pea = sdxl
    donor = UNet2DConditionModel.from_pretrained(pipeline_source(preset, model_cache), subfolder="unet")
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(donor))
    pipe = load_pipeline(preset, model_cache)
    plain = PEAPipeline.wrap(pipe, adapter_dir, KO, preset, model_cache)("빨간 원", generator=_gen(), **STEPS).images
    pipe.load_lora_weights(tmp_path)
    with_lora = PEAPipeline.wrap(pipe, adapter_dir, KO, preset, model_cache)("빨간 원", generator=_gen(), **STEPS).images
    assert with_lora.shape == plain.shape and not np.allclose(with_lora, plain)


def test_controlnet_plugs_in(sdxl, model_cache):
    preset, adapter_dir, pea = sdxl
    base = pea.pipe
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(16, 32, 64))  # /4, the tiny VAE factor
    pipe = StableDiffusionXLControlNetPipeline(**base.components, controlnet=controlnet)
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    out = PEAPipeline.wrap(pipe, adapter_dir, KO, preset, model_cache)("빨간 원", image=image, generator=_gen(), **STEPS)
    assert out.images.shape == (1, 32, 32, 3)


def test_inpainting_plugs_in(sdxl, model_cache):
    preset, adapter_dir, pea = sdxl
    pipe = StableDiffusionXLInpaintPipeline(**pea.pipe.components)
    image = Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((16, 16), 255, dtype=np.uint8), 8))
    out = PEAPipeline.wrap(pipe, adapter_dir, KO, preset, model_cache)(
        "빨간 원", image=image, mask_image=mask, strength=0.9, generator=_gen(), **STEPS)
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()


def test_lcm_scheduler_and_turbo_style_sampling_plug_in(sdxl):
    pea = sdxl[2]
    original = pea.pipe.scheduler
    try:
        pea.pipe.scheduler = LCMScheduler.from_config(original.config)
        lcm = pea("빨간 원", num_inference_steps=2, guidance_scale=1.0, generator=_gen(), output_type="np").images
        assert lcm.shape == (1, 32, 32, 3) and np.isfinite(lcm).all()
    finally:
        pea.pipe.scheduler = original
    turbo = pea("빨간 원", num_inference_steps=1, guidance_scale=0.0, generator=_gen(), output_type="np").images
    assert turbo.shape == (1, 32, 32, 3)


def test_a_fine_tuned_checkpoint_takes_the_same_adapter(sdxl, model_cache):
    preset, adapter_dir, pea = sdxl
    torch.manual_seed(123)
    tuned = UNet2DConditionModel.from_config(pea.pipe.unet.config)  # same architecture, other weights
    pipe = StableDiffusionXLPipeline(**{**pea.pipe.components, "unet": tuned})
    out = PEAPipeline.wrap(pipe, adapter_dir, KO, preset, model_cache)("빨간 원", generator=_gen(), **STEPS).images
    base = pea("빨간 원", generator=_gen(), **STEPS).images
    assert out.shape == base.shape and not np.array_equal(out, base)


def test_a_compressed_student_unet_in_a_stock_pipeline_takes_the_same_adapter(sdxl, model_cache, tmp_path):
    """pea compress's output (a diffusers UNet folder) loads with from_pretrained into a stock pipeline, and an
    adapter trained on the teacher drives it (issue #18 item 4; benchmarks/compress.py measures how well)."""
    from pea.compress.recipes import get_recipe
    from pea.compress.student import make_student, save_student

    preset, adapter_dir, pea = sdxl
    folder = save_student(make_student(pea.pipe.unet, get_recipe("sdxl-midless")), tmp_path / "unet")
    student = UNet2DConditionModel.from_pretrained(folder)
    pipe = StableDiffusionXLPipeline(**{**pea.pipe.components, "unet": student})
    out = PEAPipeline.wrap(pipe, adapter_dir, KO, preset, model_cache)("빨간 원", generator=_gen(), **STEPS).images
    base = pea("빨간 원", generator=_gen(), **STEPS).images
    assert pipe.unet.mid_block is None and out.shape == base.shape and np.isfinite(out).all()
    assert not np.array_equal(out, base)


def test_empty_prompt_is_refused(sdxl):
    with pytest.raises(PeaError, match="empty prompt"):
        sdxl[2]("  ")


def test_a_language_the_adapter_was_not_trained_for_is_refused(sdxl, model_cache):
    preset, adapter_dir, pea = sdxl
    with pytest.raises(PeaError, match="trained for 'ko', not 'zh'"):
        PEAPipeline.wrap(pea.pipe, adapter_dir, get_language("zh"), preset, model_cache)


def test_an_sd15_adapter_on_an_sdxl_model_is_refused(sdxl, model_cache, tmp_path):
    preset = sdxl[0]
    spec = preset.student_for(KO)
    folder = PEAAdapter(AdapterConfig(input_dim=spec.hidden_size, context_dim=32, language="ko")).save(tmp_path)
    with pytest.raises(PeaError, match="context width is 32, but this model needs 64"):
        PEAPipeline.wrap(sdxl[2].pipe, folder, KO, preset, model_cache)
