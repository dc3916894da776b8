"""The per-worker training loop. Every Ray Train call of pea is in this module and in run.py."""

import logging
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pea.adapter import PEAAdapter
from pea.data.loader import BucketBatchLoader, Position
from pea.data.records import features_batch, image_batch
from pea.distill import HookedUNet, NonFiniteLossError, kd_step
from pea.storage import Storage
from pea.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from pea.train.config import TrainJob
from pea.train.gauges import TrainGauges

log = logging.getLogger("pea.train")


class _Models:
    """The frozen models a worker needs, loaded once: the UNet and scheduler always; the VAE and text
    encoders only when features were not cached."""

    def __init__(self, job: TrainJob, device: torch.device, storage: Storage):
        from diffusers import UNet2DConditionModel

        from pea.data.cache import load_null
        from pea.languages import get_language
        from pea.models.loading import load_pipeline, pipeline_source
        from pea.presets import get_preset

        preset = get_preset(job.preset)
        cache = Path(job.model_cache)
        if job.cached:
            import diffusers

            source = pipeline_source(preset, cache)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
            scheduler_config = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler")
            self.scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
            self.null = load_null(storage, job.lang, job.preset)
            self.extractor = None
        else:
            from pea.features import FeatureExtractor
            from pea.models.encoders import load_text_encoder

            pipe = load_pipeline(preset, cache).to(device)
            student = load_text_encoder(preset.student_for(get_language(job.lang)), cache).to(device)
            self.extractor = FeatureExtractor(pipe, student)
            unet, self.scheduler, self.null = pipe.unet, pipe.scheduler, self.extractor.null()
        unet.to(device)
        if job.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if device.type == "cpu":
            unet.to(memory_format=torch.channels_last)
        self.unet = HookedUNet(unet, job.train.kd_config().feature_blocks)
        self.null = _null_to(self.null, device)

    def batch(self, raw, device, generator):
        if self.extractor is None:
            return raw.to(device)
        return self.extractor(raw["images"].to(device), raw["english"], raw["native"], raw["culture"].to(device),
                              time_ids=raw["time_ids"].to(device), keys=raw["keys"], generator=generator)


def _null_to(null, device):
    from pea.adapter import Conditioning

    null.teacher = Conditioning(null.teacher.context.to(device),
                                null.teacher.pooled.to(device) if null.teacher.pooled is not None else None)
    null.student_states, null.student_mask = null.student_states.to(device), null.student_mask.to(device)
    return null


def _any_rank(flag: bool, device) -> bool:
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def train_loop_per_worker(config: dict) -> None:
    from transformers import get_cosine_schedule_with_warmup

    job = TrainJob.model_validate(config["job"])
    cfg, kd = job.train, job.train.kd_config()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    storage = Storage(job.storage_root, endpoint_url=job.s3_endpoint_url)
    models = _Models(job, device, storage)

    adapter = PEAAdapter(job.adapter).to(device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank)
    state = TrainState()
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            state = load_checkpoint(Path(folder), adapter, optimizer, schedule, generator)
    model = ray.train.torch.prepare_model(adapter, move_to_device=False)

    loader = BucketBatchLoader(storage, job.data_prefix, job.shards, cfg.batch_size,
                               features_batch if job.cached else image_batch, rank, world, cfg.seed,
                               cfg.shuffle_buffer)
    if loader.batches_per_epoch() == 0:
        raise ValueError(f"rank {rank} gets no full batch of {cfg.batch_size}: lower batch_size or add data")
    bar = _progress(cfg, rank, state.step)
    gauges = TrainGauges(job.lang, job.run_name) if rank == 0 else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
    sums: dict[str, float] = {}
    window_start, window_samples, window_steps = time.perf_counter(), 0, 0
    micro = 0
    position = state.position
    while state.step < cfg.steps:
        for position, raw in loader(position):
            batch = models.batch(raw, device, generator)
            last_micro = (micro + 1) % cfg.grad_accum == 0
            sync = nullcontext() if (last_micro or world == 1) else model.no_sync()
            with sync:
                try:
                    with autocast:
                        result = kd_step(models.unet, model.module if world > 1 else model, models.scheduler,
                                         batch, models.null, kd, generator, state.step)
                    bad = False
                except NonFiniteLossError as e:
                    if cfg.on_nonfinite == "raise":
                        raise
                    log.warning("skipping batch: %s", e)
                    bad = True
                if _any_rank(bad, device):
                    optimizer.zero_grad(set_to_none=True)
                    micro = 0
                    continue
                (result.loss / cfg.grad_accum).backward()
            for k, v in result.terms.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            micro += 1
            window_samples += len(batch.keys) * world
            if not last_micro:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.samples += cfg.batch_size * cfg.grad_accum * world
            state.position = position
            window_steps += 1
            if bar is not None:
                bar.update(1)
            if cfg.fault_at_step == state.step and rank == 0 and not resumed:
                raise RuntimeError(f"chaos drill: rank 0 dies at step {state.step}")
            finished = state.step >= cfg.steps
            if state.step % cfg.log_every == 0 or finished:
                elapsed = time.perf_counter() - window_start
                metrics = {k: v / window_steps for k, v in sums.items()}
                metrics |= {"lr": schedule.get_last_lr()[0], "samples_per_s": window_samples / max(elapsed, 1e-9),
                            "step": state.step, "samples": state.samples}
                if device.type == "cuda":
                    metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                if rank == 0:
                    _log_metrics(job, metrics, state.step, cfg)
                    gauges.observe(metrics, device)
                sums, window_start, window_samples, window_steps = {}, time.perf_counter(), 0, 0
            if state.step % cfg.checkpoint_every == 0 or finished:
                _report(job, adapter, optimizer, schedule, state, generator, rank, state.step)
                if gauges is not None:
                    gauges.checkpointed()
            if finished:
                break
        else:
            position = Position(position.epoch + 1, 0)
            state.position = position
    if bar is not None:
        bar.close()


def _progress(cfg, rank, start):
    if rank != 0 or cfg.progress != "bar":
        return None
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step")


def _log_metrics(job: TrainJob, metrics: dict, step: int, cfg) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    MlflowClient(job.mlflow_tracking_uri).log_batch(
        job.mlflow_run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
    if cfg.progress == "log":
        eta = (cfg.steps - step) * cfg.batch_size * cfg.grad_accum / max(metrics["samples_per_s"], 1e-9)
        log.info("step %d/%d loss %.4f samples/s %.1f eta %.0fs", step, cfg.steps, metrics.get("loss", float("nan")),
                 metrics["samples_per_s"], eta)


def _report(job, adapter, optimizer, schedule, state, generator, rank, step) -> None:
    metrics = {"step": step}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), adapter, optimizer, schedule, state, generator)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step-{step:08d}")
