"""Distilling a block-removed student (issue 18, item 2; pea.compress.distill) on the tiny presets' UNets: the
loss is BK-SDM's (pinned against a hand computation the way their training script does it), training moves the
student and never the teacher, the feature term pairs exactly the blocks both UNets have, gradient
checkpointing changes nothing, and a non-finite loss raises."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from sync_helpers import free_port

from pea.compress.distill import (
    CompressLosses,
    FeatureTaps,
    compress_step,
    feature_pairs,
    frozen_teacher,
    trainable_student,
)
from pea.compress.measure import real_unet_config
from pea.compress.recipes import Recipe, get_recipe
from pea.compress.student import make_student
from pea.distill import NonFiniteLossError, add_noise, training_scheduler
from pea.kd_types import KDBatch, NullConditioning
from pea.models.tiny import ensure_built
from pea.resources import resource_path

FAMILY = {"tiny-sd15": "sd15", "tiny-sdxl": "sdxl"}
MIDLESS = {"tiny-sd15": "bk-sdm-midless", "tiny-sdxl": "sdxl-midless"}  # the registry's recipes for 2-level UNets
ALL_BLOCKS = ("down", "mid", "up")


# SD1.5's real layout (4 levels, 2 layers each, mid block) at tiny widths, for the BK-SDM recipes themselves
# (removing a level needs the two innermost widths equal, as SD1.5's 1280/1280: the tiny presets' are 64/128)
SD15_LAYOUT = {"block_out_channels": [32, 32, 64, 64], "cross_attention_dim": 32, "norm_num_groups": 8,
               "sample_size": 8}
# Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py (fe4cb338) mapping_layers_stu / mapping_layers_tea
BK_SDM_MAPPING = {
    "bk-sdm-base": [(f"{part}.{i}", f"{part}.{i}") for part in ("down_blocks", "up_blocks") for i in range(4)],
    "bk-sdm-tiny": [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                    ("down_blocks.2.attentions.0.proj_out", "down_blocks.2.attentions.1.proj_out"),
                    ("up_blocks.0", "up_blocks.1"), ("up_blocks.1", "up_blocks.2"), ("up_blocks.2", "up_blocks.3")],
}


def _recipe(name: str, kind: str) -> Recipe:
    """midless: the registry's recipe for the tiny presets; same: every block kept (a copy of the teacher)."""
    return get_recipe(MIDLESS[name]) if kind == "midless" else Recipe(name=kind, family=FAMILY[name])


@pytest.fixture(scope="module", params=sorted(FAMILY))
def tiny(request, model_cache):
    """(name, frozen teacher UNet, DDPM training scheduler) of a tiny preset."""
    folder = ensure_built(request.param, model_cache)
    teacher = frozen_teacher(UNet2DConditionModel.from_pretrained(folder, subfolder="unet"))
    scheduler = training_scheduler(DDPMScheduler.load_config(str(folder), subfolder="scheduler"))
    return request.param, teacher, scheduler


@pytest.fixture(scope="module")
def sd15_layout():
    """(name, frozen teacher with SD1.5's layout at tiny widths, SD1.5's training scheduler)."""
    torch.manual_seed(0)
    teacher = frozen_teacher(UNet2DConditionModel.from_config(dict(real_unet_config("sd15"), **SD15_LAYOUT)))
    scheduler = json.loads(resource_path("configs", "sd15", "scheduler.json").read_text())
    return "sd15-layout", teacher, training_scheduler(scheduler)


def _student(tiny, kind="midless", gradient_checkpointing=False):
    name, teacher, _ = tiny
    recipe = get_recipe(kind) if kind.startswith("bk-sdm") else _recipe(name, kind)
    return trainable_student(make_student(teacher, recipe), gradient_checkpointing)


def _batch(unet, b: int = 2, seed: int = 0) -> KDBatch:
    """Cached-feature stand-ins: latents (B, 4, s, s), English context (B, 8, C); pooled (B, P) and time ids
    (B, 6) for SDXL. The student-encoder fields are unused by the compression step."""
    g, cfg = torch.Generator().manual_seed(seed), unet.config
    pooled = time_ids = None
    if cfg.addition_embed_type == "text_time":
        pooled = torch.randn(b, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim,
                             generator=g)
        time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(b, 1)
    side = cfg.sample_size
    return KDBatch(latents=torch.randn(b, 4, side, side, generator=g),
                   teacher_context=torch.randn(b, 8, cfg.cross_attention_dim, generator=g), teacher_pooled=pooled,
                   student_states=torch.zeros(b, 1, 1), student_mask=torch.ones(b, 1),
                   culture=torch.zeros(b, dtype=torch.bool), time_ids=time_ids, keys=[f"k{i}" for i in range(b)])


def _step(student, tiny, batch, cfg: CompressLosses | None = None, seed=0, **kwargs):
    _, teacher, scheduler = tiny
    cfg = cfg or CompressLosses()
    taps = FeatureTaps(student, teacher, cfg.feature_blocks)
    try:
        return compress_step(student, teacher, batch, scheduler, taps, cfg,
                             generator=torch.Generator().manual_seed(seed), **kwargs)
    finally:
        taps.remove()


def test_training_moves_the_student_and_never_the_teacher(tiny):
    _, teacher, scheduler = tiny
    student = _student(tiny)
    taps = FeatureTaps(student, teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    generator, batch = torch.Generator().manual_seed(0), _batch(teacher)
    for step in range(3):
        result = compress_step(student, teacher, batch, scheduler, taps, generator=generator, step=step)
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    taps.remove()
    assert set(result.terms) == {"sd", "output_kd", "feature_kd", "loss"}
    moved = [k for k, p in student.named_parameters() if not torch.equal(p, before[k])]
    assert len(moved) == len(list(student.parameters()))
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_loss_parts_are_bk_sdm_mses(tiny):
    """The terms as Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py computes them: hooks on the mapped
    layers by name, F.mse_loss means in fp32, the feature term the sum over layers, every lambda 1."""
    _, teacher, scheduler = tiny
    student, batch = _student(tiny), _batch(teacher)
    result = _step(student, tiny, batch, seed=3)

    assert scheduler.config.prediction_type == "epsilon"  # so the task target is the noise itself
    noised = add_noise(scheduler, batch.latents, CompressLosses(), torch.Generator().manual_seed(3))
    layers = ["down_blocks.0", "down_blocks.1", "up_blocks.0", "up_blocks.1"]  # no mid_block, as theirs
    acts = {"student": {}, "teacher": {}}

    def hook(mem, name):
        return lambda module, args, output: mem.__setitem__(name, output[0] if isinstance(output, tuple) else output)

    sides = (("student", student), ("teacher", teacher))
    handles = [m.register_forward_hook(hook(acts[side], n)) for side, unet in sides
               for n, m in unet.named_modules() if n in layers]
    added = {"text_embeds": batch.teacher_pooled, "time_ids": batch.time_ids} if batch.time_ids is not None else None
    with torch.no_grad():
        pred = student(noised.noisy, noised.timesteps, batch.teacher_context, added_cond_kwargs=added).sample
        teacher_pred = teacher(noised.noisy, noised.timesteps, batch.teacher_context, added_cond_kwargs=added).sample
    for h in handles:
        h.remove()
    sd = F.mse_loss(pred.float(), noised.noise.float(), reduction="mean")
    kd_output = F.mse_loss(pred.float(), teacher_pred.float(), reduction="mean")
    per_layer = {n: F.mse_loss(acts["student"][n].float(), acts["teacher"][n].float()) for n in layers}
    kd_feat = sum(per_layer.values())

    assert result.terms["sd"] == pytest.approx(float(sd), rel=1e-5)
    assert result.terms["output_kd"] == pytest.approx(float(kd_output), rel=1e-5)
    assert result.terms["feature_kd"] == pytest.approx(float(kd_feat), rel=1e-5)
    assert result.terms["loss"] == pytest.approx(float(sd + kd_output + kd_feat), rel=1e-5)
    assert result.features == pytest.approx({n: float(v) for n, v in per_layer.items()}, rel=1e-5)
    # midless keeps the down path as it is: only what comes after the removed mid block differs
    assert [n for n, v in result.features.items() if v > 0] == ["up_blocks.0", "up_blocks.1"]
    weighted = _step(student, tiny, batch, CompressLosses(sd=0.5, output_kd=2, feature_kd=0.1), seed=3)
    assert weighted.terms["loss"] == pytest.approx(float(0.5 * sd + 2 * kd_output + 0.1 * kd_feat), rel=1e-5)


PAIRS = {  # (student recipe, feature blocks) -> the (student, teacher) modules paired on a 2-level tiny UNet
    ("midless", ALL_BLOCKS): [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                              ("up_blocks.0", "up_blocks.0"), ("up_blocks.1", "up_blocks.1")],
    ("same", ALL_BLOCKS): [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                           ("mid_block", "mid_block"), ("up_blocks.0", "up_blocks.0"), ("up_blocks.1", "up_blocks.1")],
    ("same", ("down", "up")): [("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.1"),
                               ("up_blocks.0", "up_blocks.0"), ("up_blocks.1", "up_blocks.1")],
}


@pytest.mark.parametrize(("kind", "blocks"), list(PAIRS))
def test_feature_terms_are_the_blocks_both_unets_have(tiny, kind, blocks):
    _, teacher, _ = tiny
    student = _student(tiny, kind)
    expected = PAIRS[kind, blocks]
    assert feature_pairs(student, teacher, blocks) == expected
    result = _step(student, tiny, _batch(teacher), CompressLosses(feature_blocks=blocks))
    assert list(result.features) == [s for s, _ in expected]
    assert result.terms["feature_kd"] == pytest.approx(sum(result.features.values()), rel=1e-6)
    if kind == "same":  # a student that is its teacher's copy matches it everywhere
        assert result.terms["output_kd"] == 0 and result.terms["feature_kd"] == 0


@pytest.mark.parametrize("name", sorted(BK_SDM_MAPPING))
def test_bk_sdm_recipes_pair_the_layers_their_script_hooks(sd15_layout, name):
    """bk-sdm-tiny drops the innermost level: its last down stage has no downsampler, so it is compared by
    its last attention's proj_out, and its up stage i by the teacher's i + 1 (their bk_tiny lists)."""
    teacher = sd15_layout[1]
    student = _student(sd15_layout, name)
    assert feature_pairs(student, teacher) == BK_SDM_MAPPING[name]
    result = _step(student, sd15_layout, _batch(teacher))
    assert list(result.features) == [s for s, _ in BK_SDM_MAPPING[name]]
    assert all(v > 0 for k, v in result.features.items() if k.startswith("up_blocks"))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny):
    _assert_checkpointing_changes_nothing(tiny, "midless")


def test_gradient_checkpointing_with_a_hook_inside_a_checkpointed_block(sd15_layout):
    """bk-sdm-tiny's hooked proj_out sits inside a block whose resnets checkpointing recomputes in backward."""
    _assert_checkpointing_changes_nothing(sd15_layout, "bk-sdm-tiny")


def _assert_checkpointing_changes_nothing(tiny, kind):
    teacher = tiny[1]
    batch, runs = _batch(teacher), []
    for checkpointing in (False, True):
        student = _student(tiny, kind, gradient_checkpointing=checkpointing)
        assert any(getattr(m, "gradient_checkpointing", False) for m in student.modules()) == checkpointing
        result = _step(student, tiny, batch)
        result.loss.backward()
        runs.append((result, {k: p.grad for k, p in student.named_parameters()}))
    (plain, plain_grads), (ckpt, ckpt_grads) = runs
    assert ckpt.terms == pytest.approx(plain.terms, abs=1e-5)
    assert all(plain_grads[k] is not None for k in plain_grads)
    for k, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[k], g, atol=1e-5, rtol=1e-5, msg=k)


def test_a_nan_loss_raises_naming_step_and_samples(tiny):
    _, teacher, _ = tiny
    batch = _batch(teacher)
    batch.latents[1] = float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 7") as caught:
        _step(_student(tiny), tiny, batch, step=7)
    assert caught.value.keys == batch.keys and caught.value.step == 7


def test_cfg_dropout_swaps_the_context_for_the_empty_prompts_on_both_sides(tiny):
    _, teacher, _ = tiny
    student, batch = _student(tiny), _batch(teacher)
    null = NullConditioning(teacher_context=torch.randn(1, 8, teacher.config.cross_attention_dim),
                            student_states=torch.zeros(1, 1, 1), student_mask=torch.ones(1, 1))
    dropped = _step(student, tiny, batch, CompressLosses(cfg_dropout=1.0), null=null)
    swapped = KDBatch(**{**batch.__dict__, "teacher_context": null.teacher_context.expand_as(batch.teacher_context)})
    assert dropped.terms == pytest.approx(_step(student, tiny, swapped).terms, rel=1e-6)
    with pytest.raises(ValueError, match="null conditioning"):
        _step(student, tiny, batch, CompressLosses(cfg_dropout=0.1))


def test_trainable_student_is_fp32_and_the_teacher_frozen(tiny):
    _, teacher, _ = tiny
    student = trainable_student(make_student(teacher, _recipe(tiny[0], "midless")).to(torch.bfloat16).eval())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in student.parameters()) and student.training
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_ddp_wrapped_student_gives_the_unwrapped_loss_and_gradients(tiny):
    """Hooks go on the wrapped module (BK-SDM renames its hooked layers 'module.*' instead); one rank of gloo."""
    _, teacher, _ = tiny
    batch = _batch(teacher)
    plain = _student(tiny)
    expected = _step(plain, tiny, batch)
    expected.loss.backward()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(_student(tiny))
        result = _step(wrapped, tiny, batch)
        result.loss.backward()
    finally:
        dist.destroy_process_group()
    assert result.terms == pytest.approx(expected.terms, rel=1e-6) and result.features == expected.features
    grads = dict(plain.named_parameters())
    for k, p in wrapped.module.named_parameters():
        torch.testing.assert_close(p.grad, grads[k].grad, msg=k)
