import json

import pytest
import torch

from pea.adapter import AdapterConfig, PEAAdapter
from pea.distill import (ABLATIONS, HookedUNet, KDConfig, NonFiniteLossError, add_noise, diffusion_target, dropout_rows,
                         kd_step, student_conditioning, training_scheduler)
from pea.features import FeatureExtractor
from pea.kd_types import Conditioning
from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.presets import get_preset
from pea.resources import resource_path

B = 6


@pytest.fixture(scope="module", params=["tiny-sdxl", "tiny-sd15"])
def world(request, model_cache):
    return _make_world(request.param, model_cache)


def _make_world(name, model_cache):
    preset = get_preset(name)
    pipe = load_pipeline(preset, model_cache)
    encoder = load_text_encoder(preset.student_for(get_language("ko")), model_cache)
    extractor = FeatureExtractor(pipe, encoder)
    torch.manual_seed(0)
    images = torch.rand(B, 3, 32, 32) * 2 - 1
    english = ["a red circle", "a blue square", "a green star", "a red square", "", ""]
    native = ["빨간 원", "파란 사각형", "초록 별", "빨간 사각형", "한복", "김치"]
    culture = torch.tensor([0, 0, 0, 0, 1, 1])
    batch = extractor(images, english, native, culture, keys=[f"s{i}" for i in range(B)])
    return preset, pipe, encoder, batch, extractor.null()


def _adapter(preset, encoder):
    torch.manual_seed(1)
    return PEAAdapter(AdapterConfig(input_dim=encoder.hidden_size, context_dim=preset.context_dim,
                                    pooled_dim=preset.pooled_dim, hidden_dims=(64, 64)))


def _noise(pipe):
    return training_scheduler(pipe.scheduler.config)


def _step(world, cfg, batch=None, seed=0):
    preset, pipe, encoder, default_batch, null = world
    adapter = _adapter(preset, encoder)
    unet = HookedUNet(pipe.unet, cfg.feature_blocks)
    result = kd_step(unet, adapter, _noise(pipe), batch or default_batch, null, cfg, torch.Generator().manual_seed(seed))
    return adapter, pipe, result


def test_gradients_reach_only_the_adapter(world):
    adapter, pipe, result = _step(world, KDConfig())
    result.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.mlp.parameters())
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())


def test_hybrid_training_splits_losses_by_sample_kind(world):
    _, _, mixed = _step(world, KDConfig())
    assert {"output_kd", "feature_kd", "sd"} <= set(mixed.terms)
    batch = world[3]
    only_parallel = type(batch)(**{**batch.__dict__, "culture": torch.zeros(B, dtype=torch.bool)})
    _, _, parallel = _step(world, KDConfig(), batch=only_parallel)
    assert "sd" not in parallel.terms and parallel.terms["feature_kd"] > 0
    only_culture = type(batch)(**{**batch.__dict__, "culture": torch.ones(B, dtype=torch.bool)})
    _, _, culture = _step(world, KDConfig(), batch=only_culture)
    assert set(culture.terms) == {"sd", "loss"}


@pytest.mark.parametrize(
    "name, terms",
    [
        ("finetune", {"sd"}),
        ("tkd", {"sd", "text_kd"}),
        ("ulkd", {"sd", "output_kd"}),
        ("ufkd", {"sd", "output_kd", "feature_kd"}),
        ("utkd", {"sd", "output_kd", "feature_kd", "text_kd"}),
        ("ukd", {"sd", "output_kd", "feature_kd"}),
        ("pea", {"sd", "output_kd", "feature_kd"}),
    ],
)
def test_ablation_rows_weigh_the_papers_terms(world, name, terms):
    _, _, result = _step(world, ABLATIONS[name])
    weights = ABLATIONS[name].model_dump()
    assert set(result.terms) - {"loss"} == terms
    total = sum(weights[k] * v for k, v in result.terms.items() if k != "loss")
    assert result.terms["loss"] == pytest.approx(total, rel=1e-5)


def test_feature_kd_hooks_every_down_mid_and_up_block(world):
    preset, pipe, *_ = world
    unet = HookedUNet(pipe.unet, ("down", "mid", "up"))
    latents = torch.randn(1, 4, 8, 8)
    cond = _adapter(preset, world[2])(world[3].student_states[:1], world[3].student_mask[:1])
    time_ids = world[3].time_ids[:1] if world[3].time_ids is not None else None
    _, feats = unet(latents, torch.tensor([10]), cond, time_ids, features=True)
    assert len(feats) == len(pipe.unet.down_blocks) + 1 + len(pipe.unet.up_blocks)
    _, none = unet(latents, torch.tensor([10]), cond, time_ids, features=False)
    assert none == []


def test_cfg_dropout_on_sdxl_still_gives_kd_a_gradient(model_cache):
    # the official scheme: both sides' context becomes the encoded empty prompt (the student's through the
    # adapter), pooled kept; SDXL's inference-time zeros on both sides would make KD zero and the step idle
    adapter, _, result = _step(_make_world("tiny-sdxl", model_cache), KDConfig(cfg_dropout=1.0))
    assert result.terms["output_kd"] > 0 and result.terms["feature_kd"] > 0
    result.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())


def test_dropped_rows_take_the_adapted_empty_prompt_and_keep_their_pooled(world):
    preset, _, encoder, batch, null = world
    adapter = _adapter(preset, encoder)
    drop = torch.tensor([True, False, True, False, False, True])
    cond = student_conditioning(adapter, batch, null, drop)
    own = adapter(batch.student_states, batch.student_mask)
    empty = adapter(null.student_states, null.student_mask)
    assert torch.allclose(cond.context[drop], empty.context.expand(3, -1, -1), atol=1e-6)
    assert torch.allclose(cond.context[~drop], own.context[~drop], atol=1e-6)
    if own.pooled is not None:
        assert torch.allclose(cond.pooled, own.pooled, atol=1e-6)


def test_the_teachers_null_is_the_encoded_empty_prompt_not_sdxls_zeros(model_cache):
    *_, null = _make_world("tiny-sdxl", model_cache)
    assert null.teacher_context.abs().sum() > 0


def test_training_noise_is_ddpm_even_where_the_pipeline_samples_with_euler(model_cache):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    pipe = load_pipeline(get_preset("tiny-sdxl"), model_cache)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)  # as stabilityai/stable-diffusion-xl-base-1.0 ships
    noise = training_scheduler(pipe.scheduler.config)
    assert isinstance(noise, DDPMScheduler)
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    assert torch.allclose(noise.alphas_cumprod, ref.alphas_cumprod)
    # zero latents at t=999: unit-variance noisy latents (Euler's add_noise gives sigma ~14.6 here)
    latents = torch.zeros(64, 4, 16, 16)
    gen = torch.Generator().manual_seed(0)
    cfg = KDConfig()
    noised = add_noise(noise, latents, cfg, gen)
    at_999 = noise.add_noise(latents, noised.noise, torch.full((64,), 999))
    assert 0.95 < at_999.std() < 1.05
    with pytest.raises(TypeError, match="DDPMScheduler"):
        add_noise(pipe.scheduler, latents, cfg, gen)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_targets_equal_diffusers_ddpm(prediction):
    from diffusers import DDPMScheduler

    shipped = json.loads(resource_path("configs", "sdxl", "scheduler.json").read_text())  # EulerDiscreteScheduler
    config = {**shipped, "prediction_type": prediction}
    noise_sched = training_scheduler(config)
    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction)
    latents, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    want = noise if prediction == "epsilon" else ref.get_velocity(latents, noise, t)
    assert torch.allclose(diffusion_target(noise_sched, latents, noise, t), want, atol=1e-6)


def test_every_term_is_masked_per_sample_and_averaged_over_the_whole_batch(world):
    # the official code's scheme (train_sdxl_zh.py): a culture row and a parallel row weigh 1/B each
    preset, pipe, encoder, batch, null = world
    cfg = KDConfig(cfg_dropout=0.0)
    adapter = _adapter(preset, encoder)
    unet = HookedUNet(pipe.unet, cfg.feature_blocks)
    noise_sched = _noise(pipe)
    result = kd_step(unet, adapter, noise_sched, batch, null, cfg, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    noised = add_noise(noise_sched, batch.latents, cfg, gen)
    drop = dropout_rows(B, cfg.cfg_dropout, gen, "cpu")
    student = student_conditioning(adapter, batch, null, drop)
    with torch.no_grad():
        pred, _ = unet(noised.noisy, noised.timesteps, student, batch.time_ids, features=False)
        t_pred, _ = unet(noised.noisy, noised.timesteps, Conditioning(batch.teacher_context, batch.teacher_pooled),
                         batch.time_ids, features=False)
    per_sd = ((pred - noised.noise) ** 2).flatten(1).mean(1)
    per_kd = ((pred - t_pred) ** 2).flatten(1).mean(1)
    culture = batch.culture
    assert result.terms["sd"] == pytest.approx(float(per_sd[culture].sum() / B), rel=1e-4)
    assert result.terms["output_kd"] == pytest.approx(float(per_kd[~culture].sum() / B), rel=1e-4)
    assert KDConfig().feature_kd == 0.1  # the official weight of the summed feature terms


def test_a_nan_is_reported_with_step_and_sample_keys(world):
    batch = world[3]
    poisoned = type(batch)(**{**batch.__dict__, "latents": batch.latents.clone()})
    poisoned.latents[2] = float("nan")
    with pytest.raises(NonFiniteLossError) as e:
        preset, pipe, encoder, _, null = world
        kd_step(HookedUNet(pipe.unet), _adapter(preset, encoder), _noise(pipe), poisoned, null, KDConfig(), step=17)
    assert "step 17" in str(e.value) and "s2" in str(e.value)


def test_v_prediction_target_follows_the_scheduler(world):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(prediction_type="v_prediction")
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    assert torch.equal(diffusion_target(sched, latents, noise, t), sched.get_velocity(latents, noise, t))
    assert torch.equal(diffusion_target(world[1].scheduler, latents, noise, t), noise)


@pytest.mark.slow
def test_kd_training_pulls_the_student_towards_the_teacher(world):
    preset, pipe, encoder, batch, null = world
    adapter = _adapter(preset, encoder)
    unet = HookedUNet(pipe.unet)
    opt = torch.optim.AdamW(adapter.parameters(), lr=3e-3)
    cfg = KDConfig(cfg_dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    noise = _noise(pipe)
    losses = []
    for step in range(40):
        result = kd_step(unet, adapter, noise, batch, null, cfg, gen, step)
        result.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(result.terms["feature_kd"])
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_errors_survive_pickling_as_ray_sends_them():
    """Ray pickles a worker's exception; deepcopy rebuilds it through the same __reduce__ protocol."""
    import copy

    from pea.errors import PeaError

    err = copy.deepcopy(NonFiniteLossError(3, ["a", "b"], {"sd": float("nan")}))
    assert err.step == 3 and "step 3" in str(err) and "a, b" in str(err)
    plain = copy.deepcopy(PeaError("problem", "fix"))
    assert plain.problem == "problem" and plain.fix == "fix"


def test_gradient_checkpointing_recomputes_activations_and_keeps_loss_and_gradients(world):
    """The SDXL presets train with it on (pea.presets.TrainDefaults): it must change memory, never the step."""
    pipe = world[1]
    # the first layer of a checkpointed block: recomputation stops early, so the block's own hook never fires
    first = pipe.unet.up_blocks[-1].resnets[0].norm1
    calls, seen = [], {}
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    try:
        for on in (False, True):
            if on:
                pipe.unet.enable_gradient_checkpointing()
            adapter, _, result = _step(world, KDConfig())
            result.loss.backward()
            seen[on] = result.loss.detach(), [p.grad for p in adapter.parameters()], len(calls)
            calls.clear()
    finally:
        pipe.unet.disable_gradient_checkpointing()
        handle.remove()
    (loss, grads, plain_calls), (loss_ckpt, grads_ckpt, ckpt_calls) = seen[False], seen[True]
    assert ckpt_calls > plain_calls  # the student's activations were recomputed in backward
    assert torch.allclose(loss, loss_ckpt)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ckpt))
