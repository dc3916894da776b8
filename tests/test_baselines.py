"""The paper's fine-tuning baselines (pea.baselines) trained by the engine's own steps (pea.train.loop.micro_step
and optimizer_step) for a few steps on tiny-sdxl: which parameters moved (PEA: the adapter only; wkwv: attn2
to_k/to_v + bridge; lora: LoRA weights + bridge), what they save (diffusers formats a stock pipeline loads), how
a candidate is loaded without touching the base pipeline, checkpoints, registry names and DDP synchronisation."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sync_helpers import free_port, load_inputs, save_inputs

from pea.adapter import CONFIG, WEIGHTS, PEAAdapter
from pea.baselines import (
    KV_FILE,
    LORA_FILE,
    SD_LOSS,
    UNET_PARTS,
    FineTuned,
    build_trainable,
    sd_step,
    trainable_parameters,
)
from pea.distill import ABLATIONS, HookedUNet, KDConfig, training_scheduler
from pea.features import FeatureExtractor
from pea.inference import PEAPipeline
from pea.kd_types import KDBatch, NullConditioning
from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.names import UNET_METHODS, model_name, run_name
from pea.presets import get_preset
from pea.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from pea.train.config import TrainConfig
from pea.train.run import adapter_config

pytestmark = pytest.mark.slow
KO = get_language("ko")
TINY = get_preset("tiny-sdxl")
STEPS = 3
CFG = TrainConfig(batch_size=4, lr=1e-2, on_nonfinite="raise")
DRAW = dict(num_inference_steps=2, output_type="np")


def _draw(pipe, prompt="a red circle"):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **DRAW).images


def _batches(model_cache: Path, ranks: int) -> tuple[list[KDBatch], NullConditioning]:
    """`ranks` different batches of 4 (one culture sample each) and the null conditioning."""
    pipe = load_pipeline(TINY, model_cache)
    extractor = FeatureExtractor(pipe, load_text_encoder(TINY.student_for(KO), model_cache))
    torch.manual_seed(0)
    batches = [extractor(torch.rand(4, 3, 32, 32) * 2 - 1, [f"a red circle {r}", "a blue square", "", "a star"],
                         ["빨간 원", "파란 사각형", "한복", "별"], torch.tensor([0, 0, 1, 0]), keys=list("abcd"))
               for r in range(ranks)]
    return batches, extractor.null()


def _build(method: str, model_cache: Path):
    """(pipeline, trainable module, the engine's models) as a worker builds them; the same weights every call.
    `models.unet_before` is the UNet's state dict before the method touched it."""
    pipe = load_pipeline(TINY, model_cache)
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    torch.manual_seed(0)  # the bridge's and LoRA's initialisation
    module = build_trainable(method, PEAAdapter(adapter_config(KO, TINY, CFG)), pipe.unet, lora_rank=4)
    hooked = None if method in UNET_PARTS else HookedUNet(pipe.unet, ABLATIONS[method].feature_blocks)
    models = SimpleNamespace(unet=hooked, scheduler=training_scheduler(pipe.scheduler.config), null=None,
                             compression=None, unet_before=unet_before)
    return pipe, module, models


def _kd(method: str) -> KDConfig:
    return CFG.model_copy(update={"method": method}).kd_config()


def _train(method: str, model_cache: Path, batch: KDBatch, null: NullConditioning, steps: int = STEPS):
    from pea.train.loop import micro_step, optimizer_step

    pipe, module, models = _build(method, model_cache)
    models.null = null
    bridge = module.bridge if isinstance(module, FineTuned) else module
    bridge_before = {k: v.clone() for k, v in bridge.state_dict().items()}
    optimizer = torch.optim.AdamW(trainable_parameters(module), lr=CFG.lr, weight_decay=0.0)  # moves = gradients
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        assert micro_step(module, models, batch, _kd(method), CFG, generator, step, sync=True) is not None
        optimizer_step(module, optimizer, schedule, CFG.max_grad_norm)
    return SimpleNamespace(pipe=pipe, module=module, bridge=bridge, unet_before=models.unet_before,
                           bridge_before=bridge_before, optimizer=optimizer, schedule=schedule)


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def inputs(model_cache):
    batches, null = _batches(model_cache, 1)
    return batches[0], null


@pytest.fixture(scope="module")
def trained(model_cache, inputs):
    """Each method trained once for the module, on the same batch."""
    return {method: _train(method, model_cache, *inputs) for method in ("pea", "wkwv", "lora")}


def test_methods_are_run_config_values_with_the_sd_loss_and_their_own_names():
    assert set(UNET_PARTS) == set(UNET_METHODS)
    for method in UNET_METHODS:
        assert TrainConfig(method=method).kd_config() == SD_LOSS and not SD_LOSS.needs_teacher
        assert model_name("ko", method) == f"pea-ko-{method}" and run_name("ko", "sdxl", method=method) == f"pea-ko-{method}-sdxl"
        with pytest.raises(ValueError, match="SD loss alone"):
            TrainConfig(method=method, kd=KDConfig())
    assert model_name("ko") == model_name("ko", "finetune") == "pea-ko"
    assert "lora_rank" in TrainConfig(method="lora").identity() and "lora_rank" not in TrainConfig().identity()


def test_pea_moves_only_the_adapter(trained):
    run = trained["pea"]
    assert not _changed(run.unet_before, run.pipe.unet.state_dict())
    assert _changed(run.bridge_before, run.bridge.state_dict()) == set(run.bridge_before)


def test_wkwv_moves_only_the_cross_attention_keys_and_values_and_the_bridge(trained):
    run = trained["wkwv"]
    moved = _changed(run.unet_before, run.pipe.unet.state_dict())
    kv = {k for k in run.unet_before if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert len(kv) == 8 and moved == kv  # tiny-sdxl: 4 transformer blocks, K and V each
    assert _changed(run.bridge_before, run.bridge.state_dict()) == set(run.bridge_before)
    assert {p.dtype for p in trainable_parameters(run.module)} == {torch.float32}


def test_lora_moves_only_the_lora_weights_and_the_bridge(trained):
    run = trained["lora"]
    after = run.pipe.unet.state_dict()
    lora = {k for k in after if ".lora_" in k}
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if k not in lora}
    assert base.keys() == run.unet_before.keys() and not _changed(run.unet_before, base)
    assert lora and all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora if ".lora_B." in k)
    assert {n for n, p in run.pipe.unet.named_parameters() if p.requires_grad} == lora
    assert _changed(run.bridge_before, run.bridge.state_dict()) == set(run.bridge_before)


@pytest.mark.parametrize("method", ["wkwv", "lora"])
def test_the_saved_unet_part_loads_into_a_stock_diffusers_pipeline_and_reproduces_the_trained_unet(
        method, trained, model_cache, tmp_path):
    run = trained[method]
    run.module.save(tmp_path)
    part = {"wkwv": KV_FILE, "lora": LORA_FILE}[method]
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG, WEIGHTS, part}
    stock = load_pipeline(TINY, model_cache)
    untouched = _draw(stock)
    if method == "wkwv":
        saved = load_file(tmp_path / KV_FILE)
        missing, unexpected = stock.unet.load_state_dict(saved, strict=False)
        assert not unexpected and set(missing) == set(stock.unet.state_dict()) - set(saved)
    else:
        stock.load_lora_weights(tmp_path)
    loaded = _draw(stock)
    assert not np.allclose(loaded, untouched, atol=1e-4)
    np.testing.assert_allclose(loaded, _draw(run.pipe), atol=1e-5)  # the trained UNet, exactly


@pytest.mark.parametrize("method", ["wkwv", "lora"])
def test_a_candidate_draws_with_its_unet_part_and_the_base_pipeline_is_unchanged(method, trained, model_cache,
                                                                                 tmp_path):
    trained[method].module.save(tmp_path / "candidate")
    trained[method].bridge.save(tmp_path / "bridge-only")
    base = load_pipeline(TINY, model_cache)
    weights, drawn = {k: v.clone() for k, v in base.unet.state_dict().items()}, _draw(base)

    candidate = PEAPipeline.wrap(base, tmp_path / "candidate", KO, TINY, model_cache)
    plug_in = PEAPipeline.wrap(base, tmp_path / "bridge-only", KO, TINY, model_cache)
    assert plug_in.pipe is base and candidate.pipe is not base and candidate.pipe.unet is not base.unet
    assert candidate.pipe.text_encoder is base.text_encoder and candidate.pipe.vae is base.vae
    assert not np.allclose(_draw(candidate, "빨간 원"), _draw(plug_in, "빨간 원"), atol=1e-4)

    assert base.unet.state_dict().keys() == weights.keys() and not _changed(weights, base.unet.state_dict())
    np.testing.assert_array_equal(_draw(base), drawn)


@pytest.mark.parametrize("method", ["wkwv", "lora"])
def test_a_checkpoint_resumes_bridge_unet_part_and_optimizer(method, trained, model_cache, tmp_path):
    run = trained[method]
    generator = torch.Generator().manual_seed(5)
    save_checkpoint(tmp_path, run.module, run.optimizer, run.schedule, TrainState(step=STEPS), [generator.get_state()],
                    {"train": {"method": method}})
    _, fresh, _ = _build(method, model_cache)
    torch.manual_seed(1)  # another LoRA initialisation than the trained one's
    for p in trainable_parameters(fresh):
        torch.nn.init.normal_(p)
    optimizer = torch.optim.AdamW(trainable_parameters(fresh), lr=CFG.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = load_checkpoint(tmp_path, fresh, optimizer, schedule, torch.Generator())
    assert state.step == STEPS
    for mine, theirs in zip(trainable_parameters(fresh), trainable_parameters(run.module), strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"], run.optimizer.state_dict()["state"][0]["exp_avg"])


def test_baselines_register_apart_tagged_as_no_plug_ins(trained, tmp_path):
    from pea.registry import download_adapter, list_versions, register
    from pea.tracking import client

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    folder = trained["lora"].module.save(tmp_path / "lora")
    run_id = client(uri).create_run(client(uri).create_experiment("pea-ko")).info.run_id
    registered = register(uri, "ko", run_id, folder, {"pea.lang": "ko"}, {"lang": "ko"}, method="lora")
    version = client(uri).get_model_version("pea-ko-lora", registered.version)
    assert version.tags["pea.plug_in"] == "false" and version.tags["pea.changes_unet"] == "true"
    assert version.tags["pea.method"] == "lora" and list_versions(uri, "ko") == []
    downloaded = download_adapter(uri, "pea-ko-lora", registered.version, tmp_path / "down")
    assert (downloaded / LORA_FILE).read_bytes() == (folder / LORA_FILE).read_bytes()



def _rank(rank: int, world: int, port: int, folder: str, model_cache: str) -> None:
    """Both baselines trained STEPS steps through DDP: the first step's gradients and the final weights saved."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pea.train.loop import check_replicas_agree, micro_step, optimizer_step

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batch, null = load_inputs(Path(folder), rank)
        for method in UNET_METHODS:
            _, module, models = _build(method, Path(model_cache))
            models.null = null
            model = DistributedDataParallel(module)
            optimizer = torch.optim.AdamW(trainable_parameters(model), lr=CFG.lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            generator = torch.Generator().manual_seed(100 + rank)
            for step in range(STEPS):
                micro_step(model, models, batch, SD_LOSS, CFG, generator, step, sync=True)
                if step == 0:
                    first = {f"grad.{k}": p.grad.clone() for k, p in module.named_parameters() if p.requires_grad}
                optimizer_step(model, optimizer, schedule, max_grad_norm=1e6)
            check_replicas_agree(module, torch.device("cpu"))
            weights = {f"weight.{k}": p.detach().contiguous() for k, p in module.named_parameters() if p.requires_grad}
            save_file(first | weights, Path(folder) / f"{method}.rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_one_baseline_trained_on_the_mean_gradient(model_cache, tmp_path):
    batches, null = _batches(model_cache, 2)
    save_inputs(tmp_path, batches, null)
    torch.multiprocessing.start_processes(_rank, args=(2, free_port(), str(tmp_path), str(model_cache)), nprocs=2,
                                          start_method="spawn")
    for method in UNET_METHODS:
        ranks = [load_file(tmp_path / f"{method}.rank{r}.safetensors") for r in range(2)]
        weights = [k for k in ranks[0] if k.startswith("weight.")]
        assert any(k.startswith("weight.unet.") for k in weights)  # the UNet part trains under DDP
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in weights), method

        _, module, models = _build(method, model_cache)
        alone = []
        for rank, batch in enumerate(batches):
            module.zero_grad(set_to_none=True)
            sd_step(module, models.scheduler, batch, null, SD_LOSS, torch.Generator().manual_seed(100 + rank)).loss.backward()
            alone.append({f"grad.{k}": p.grad.clone() for k, p in module.named_parameters() if p.requires_grad})
        differ = [k for k in alone[0] if not torch.allclose(alone[0][k], alone[1][k])]
        assert any(k.startswith("grad.unet.") for k in differ) and any(k.startswith("grad.bridge.") for k in differ)
        for key in alone[0]:
            mean = (alone[0][key] + alone[1][key]) / 2
            for r in range(2):
                assert torch.allclose(ranks[r][key], mean, rtol=1e-4, atol=1e-7), (method, key)
