"""Students from a recipe (issue 18, item 1): block removal on the tiny presets' UNets and on small UNets with
the real SD1.5/SDXL layouts, weights copied from the teacher, saved and reloaded as diffusers UNets, and the
real architectures' sizes on the meta device against the papers'."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from pea.compress.measure import (cpu_latency, macs_per_step, meta_unet, param_count, real_unet_config,
                                  step_inputs)
from pea.compress.recipes import Recipe, get_recipe, registry
from pea.compress.reported import MACS_TOLERANCE, PARAMS_TOLERANCE_B, REPORTED
from pea.compress.student import make_student, save_student, student_config, weight_sources
from pea.errors import PeaError
from pea.models.tiny import ensure_built

MIDLESS = {"tiny-sd15": "bk-sdm-midless", "tiny-sdxl": "sdxl-midless"}
# the real layouts (layers_per_block 2, SD1.5's four levels, SDXL's three with depths 1/2/10) at tiny widths
SMALL_WIDTHS = {
    "sd15": {"block_out_channels": [32, 32, 64, 64], "cross_attention_dim": 32, "norm_num_groups": 8,
             "sample_size": 8},
    "sdxl": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4], "cross_attention_dim": 32,
             "norm_num_groups": 8, "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80,
             "sample_size": 8},
}


@pytest.fixture(scope="module", params=sorted(MIDLESS))
def tiny_teacher(request, model_cache):
    folder = ensure_built(request.param, model_cache)
    return request.param, UNet2DConditionModel.from_pretrained(folder, subfolder="unet")


@pytest.fixture(scope="module")
def layout_teachers():
    torch.manual_seed(0)
    return {family: UNet2DConditionModel.from_config(dict(real_unet_config(family), **widths))
            for family, widths in SMALL_WIDTHS.items()}


def assert_copied_from_teacher(student, teacher, recipe):
    """Every student tensor equals the teacher tensor its recipe maps it to, in storage of its own."""
    student_state, teacher_state = student.state_dict(), teacher.state_dict()
    sources = weight_sources(dict(teacher.config), recipe, student_state)
    assert set(sources) == set(student_state)
    for key, source in sources.items():
        assert torch.equal(student_state[key], teacher_state[source]), key
        assert student_state[key].data_ptr() != teacher_state[source].data_ptr(), key


def test_tiny_preset_student_is_smaller_and_copies_the_teacher(tiny_teacher):
    name, teacher = tiny_teacher
    recipe = get_recipe(MIDLESS[name])
    student = make_student(teacher, recipe)
    assert param_count(student) < param_count(teacher)
    assert student.mid_block is None and not any(k.startswith("mid_block") for k in student.state_dict())
    assert_copied_from_teacher(student, teacher, recipe)
    assert all(p.requires_grad for p in student.parameters())
    side = teacher.config.sample_size
    assert macs_per_step(student, side)["total"] < macs_per_step(teacher, side)["total"]
    assert cpu_latency(student, side, repeats=2) > 0


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_recipe_copies_kept_blocks_from_a_real_layout_teacher(name, layout_teachers):
    recipe = get_recipe(name)
    teacher = layout_teachers[recipe.family]
    student = make_student(teacher, recipe)
    assert param_count(student) < param_count(teacher)
    assert_copied_from_teacher(student, teacher, recipe)
    inputs = step_inputs(teacher, 8, batch=2, device="cpu")
    with torch.no_grad():
        assert student(**inputs).sample.shape == teacher(**inputs).sample.shape == (2, 4, 8, 8)


@pytest.mark.parametrize(("name", "student_key", "teacher_key"), [
    # Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py copy_weight_from_teacher (connect_info)
    ("bk-sdm-base", "up_blocks.1.resnets.1.conv1.weight", "up_blocks.1.resnets.2.conv1.weight"),
    ("bk-sdm-small", "up_blocks.3.attentions.1.proj_in.weight", "up_blocks.3.attentions.2.proj_in.weight"),
    ("bk-sdm-tiny", "up_blocks.0.attentions.1.proj_in.weight", "up_blocks.1.attentions.2.proj_in.weight"),
    ("bk-sdm-tiny", "up_blocks.1.upsamplers.0.conv.weight", "up_blocks.2.upsamplers.0.conv.weight"),
    ("bk-sdm-tiny", "down_blocks.2.resnets.0.conv1.weight", "down_blocks.2.resnets.0.conv1.weight"),
    # okotaku/diffengine DistillSDXL._prepare_student: up resnets[1] = resnets[2]
    ("sdxl-small", "up_blocks.0.resnets.1.conv2.weight", "up_blocks.0.resnets.2.conv2.weight"),
    ("ssd-1b", "down_blocks.2.attentions.0.transformer_blocks.3.ff.net.2.weight",
     "down_blocks.2.attentions.0.transformer_blocks.3.ff.net.2.weight"),
])
def test_weight_mapping_is_the_reference_codes(name, student_key, teacher_key, layout_teachers):
    recipe = get_recipe(name)
    student = make_student(layout_teachers[recipe.family], recipe)
    assert torch.equal(student.state_dict()[student_key],
                       layout_teachers[recipe.family].state_dict()[teacher_key])


def test_saved_student_reloads_with_identical_weights(tiny_teacher, tmp_path):
    name, teacher = tiny_teacher
    student = make_student(teacher, get_recipe(MIDLESS[name]))
    folder = save_student(student, tmp_path / "unet")
    assert (folder / "diffusion_pytorch_model.safetensors").exists()
    reloaded, info = UNet2DConditionModel.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    saved = student.state_dict()
    assert all(torch.equal(t, saved[k]) for k, t in reloaded.state_dict().items())
    assert set(reloaded.state_dict()) == set(saved)
    inputs = step_inputs(teacher, teacher.config.sample_size, batch=2, device="cpu")
    with torch.no_grad():
        assert reloaded(**inputs).sample.shape == teacher(**inputs).sample.shape


@pytest.mark.parametrize(("recipe", "message"), [
    (get_recipe("bk-sdm-base"), "stages, the student has 2"),
    (Recipe(name="bad", family="sd15", down=[[0], [3]], up=[[0, 1], [0, 1]]), "down stage 1 has no layer 3"),
    (Recipe(name="bad", family="sd15", down=[[0], [0]], up=[[0, 4], [0, 1]]), "up stage 0 has no layer 4"),
    (Recipe(name="bad", family="sd15", levels_removed=2), "cannot remove 2"),
    (Recipe(name="bad", family="sdxl", mid="remove"), "for sdxl UNets, the teacher is sd15"),
])
def test_recipe_naming_a_block_the_teacher_lacks_fails(recipe, message, model_cache):
    teacher = UNet2DConditionModel.from_pretrained(ensure_built("tiny-sd15", model_cache), subfolder="unet")
    with pytest.raises(PeaError, match=message):
        make_student(teacher, recipe)


@pytest.mark.parametrize(("recipe", "message"), [
    (Recipe(name="bad", family="sd15", down=[[0]] * 4, up=[[0, 1]] * 4), "must keep its first and last"),
    (Recipe(name="bad", family="sd15", down=[[0]] * 4, up=[[0, 1, 2]] * 4), "keeps 3 layers, its down stage 1"),
    (Recipe(name="bad", family="sd15", down=[[1, 0]] * 4), "give increasing layer indices"),
    (Recipe(name="bad", family="sd15", down_depth=[[2, 2]] * 4), "teacher's layers have \\[1, 1\\]"),
])
def test_recipe_the_unet_cannot_take_fails(recipe, message):
    with pytest.raises(PeaError, match=message):
        student_config(real_unet_config("sd15"), recipe)


@pytest.mark.parametrize(("name", "expected"), [
    # Nota-NetsPresso/BK-SDM src/unet_config/bk_{base,small,tiny}/config.json
    ("bk-sdm-base", {"layers_per_block": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
                     "block_out_channels": [320, 640, 1280, 1280]}),
    ("bk-sdm-small", {"layers_per_block": 1, "mid_block_type": None, "block_out_channels": [320, 640, 1280, 1280],
                      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                         "CrossAttnUpBlock2D"]}),
    ("bk-sdm-tiny", {"layers_per_block": 1, "mid_block_type": None, "block_out_channels": [320, 640, 1280],
                     "down_block_types": ["CrossAttnDownBlock2D"] * 3, "up_block_types": ["CrossAttnUpBlock2D"] * 3}),
    # diffengine sets layers_per_block 1 on SDXL's config and leaves its depths
    ("sdxl-small", {"layers_per_block": 1, "transformer_layers_per_block": [1, 2, 10],
                    "mid_block_type": "UNetMidBlock2DCrossAttn"}),
    ("ssd-1b", {"layers_per_block": 2, "mid_block_type": "UNetMidBlock2D",
                "transformer_layers_per_block": [[1, 1], [2, 2], [4, 4]],
                "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]]}),
])
def test_student_config_holds_the_released_fields(name, expected):
    recipe = get_recipe(name)
    config = student_config(real_unet_config(recipe.family), recipe)
    assert {key: config[key] for key in expected} == expected


@pytest.mark.parametrize("name", sorted(PARAMS_TOLERANCE_B))
def test_real_parameter_counts_match_the_papers(name):
    family = name if name in ("sd15", "sdxl") else get_recipe(name).family
    config = real_unet_config(family)
    unet = meta_unet(config if name == family else student_config(config, get_recipe(name)))
    assert param_count(unet) / 1e9 == pytest.approx(REPORTED[name]["params_b"], abs=PARAMS_TOLERANCE_B[name])


@pytest.mark.parametrize("name", ["sd15", "bk-sdm-base", "bk-sdm-small", "bk-sdm-tiny"])
def test_real_sd15_macs_match_the_paper(name):
    config = real_unet_config("sd15")
    unet = meta_unet(config if name == "sd15" else student_config(config, get_recipe(name)))
    macs = macs_per_step(unet, 64)["without_attention_scores"] / 1e9  # 512 px: a 64 x 64 latent
    assert macs == pytest.approx(REPORTED[name]["macs_g"], rel=MACS_TOLERANCE)
