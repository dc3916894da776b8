"""Gradient synchronisation of the training loop's own steps (pea.train.loop.micro_step and optimizer_step) on
two gloo processes on 127.0.0.1, without Ray: after N steps both ranks hold the same adapter, and the first
step's gradient on every rank is the mean of the gradients each rank's batch gives alone."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from sync_helpers import free_port, load_inputs, save_inputs

from pea.adapter import AdapterConfig, PEAAdapter
from pea.distill import HookedUNet, KDConfig, kd_step, training_scheduler
from pea.features import FeatureExtractor
from pea.languages import get_language
from pea.models.encoders import load_text_encoder
from pea.models.loading import load_pipeline
from pea.presets import get_preset
from pea.train.config import TrainConfig

pytestmark = pytest.mark.slow
PRESET = "tiny-sdxl"
STEPS = 3
KD = KDConfig(cfg_dropout=0.2)
CFG = TrainConfig(batch_size=4, lr=1e-2, on_nonfinite="raise")



def _models(model_cache: Path, null) -> SimpleNamespace:
    pipe = load_pipeline(get_preset(PRESET), model_cache)
    return SimpleNamespace(unet=HookedUNet(pipe.unet, KD.feature_blocks),
                           scheduler=training_scheduler(pipe.scheduler.config), null=null, compression=None)


def _adapter(batch) -> PEAAdapter:
    preset = get_preset(PRESET)
    torch.manual_seed(0)
    return PEAAdapter(AdapterConfig(input_dim=batch.student_states.shape[-1], context_dim=preset.context_dim,
                                    pooled_dim=preset.pooled_dim, hidden_dims=(32, 32)))


def _rank(rank: int, world: int, port: int, folder: str, model_cache: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pea.train.loop import check_replicas_agree, micro_step, optimizer_step

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        batch, null = load_inputs(Path(folder), rank)
        models = _models(Path(model_cache), null)
        adapter = _adapter(batch)
        model = DistributedDataParallel(adapter)
        optimizer = torch.optim.AdamW(model.parameters(), lr=CFG.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        generator = torch.Generator().manual_seed(100 + rank)
        for step in range(STEPS):
            micro_step(model, models, batch, KD, CFG, generator, step, sync=True)
            if step == 0:
                first = {f"grad.{k}": p.grad.clone() for k, p in adapter.named_parameters()}
            optimizer_step(model, optimizer, schedule, max_grad_norm=1e6)
        check_replicas_agree(adapter, torch.device("cpu"))
        save_file(first | {f"weight.{k}": v.contiguous() for k, v in adapter.state_dict().items()},
                  Path(folder) / f"rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_one_adapter_trained_on_the_mean_gradient(model_cache, tmp_path):
    preset = get_preset(PRESET)
    pipe = load_pipeline(preset, model_cache)
    extractor = FeatureExtractor(pipe, load_text_encoder(preset.student_for(get_language("ko")), model_cache))
    torch.manual_seed(0)
    batches = [extractor(torch.rand(4, 3, 32, 32) * 2 - 1, [f"a red circle {r}", "a blue square", "", "a star"],
                         ["빨간 원", "파란 사각형", "한복", "별"], torch.tensor([0, 0, 1, 0]), keys=list("abcd"))
               for r in range(2)]
    null = extractor.null()
    save_inputs(tmp_path, batches, null)

    torch.multiprocessing.start_processes(_rank, args=(2, free_port(), str(tmp_path), str(model_cache)), nprocs=2,
                                          start_method="spawn")
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    weights = [k for k in ranks[0] if k.startswith("weight.")]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in weights)

    models = _models(model_cache, null)
    alone = []
    for rank, batch in enumerate(batches):
        adapter = _adapter(batch)
        kd_step(models.unet, adapter, models.scheduler, batch, null, KD, torch.Generator().manual_seed(100 + rank)).loss.backward()
        alone.append({f"grad.{k}": p.grad for k, p in adapter.named_parameters()})
    for key in alone[0]:
        mean = (alone[0][key] + alone[1][key]) / 2
        assert not torch.allclose(alone[0][key], alone[1][key])  # the ranks' batches really differ
        for r in range(2):
            assert torch.allclose(ranks[r][key], mean, rtol=1e-4, atol=1e-7), key
