"""The per-worker training loop. Every Ray Train call of pea is in this module and in run.py.

`train_loop_per_worker` only wires the pieces: `_Models` (the frozen models, loaded once), `micro_step` (one
forward/backward through the DDP-wrapped trainable module: the adapter for PEA and its ablations, bridge + UNet
part for the baselines of pea.baselines, the student UNet for a compression job of pea.compress),
`optimizer_step`, `LogWindow` (the metrics of the last `log_every`
steps) and `_report` (checkpoints). `micro_step` and `optimizer_step` need no Ray and are tested on their own,
with two gloo processes for the gradient synchronisation.
"""

import logging
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pea import tracking
from pea.adapter import PEAAdapter
from pea.baselines import UNET_PARTS, FineTuned, build_trainable, sd_step, trainable_parameters
from pea.compress.distill import compress_step
from pea.compress.trainable import Compression, compression
from pea.data.loader import BucketBatchLoader, Position
from pea.data.records import features_batch, image_batch
from pea.data.cache import load_null
from pea.data.index import read_index
from pea.distill import HookedUNet, KDConfig, KDResult, NonFiniteLossError, kd_step, training_scheduler
from pea.errors import PeaError
from pea.features import LatentDistribution, kd_batch
from pea.kd_types import KDBatch
from pea.storage import Storage
from pea.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from pea.train.config import COMPRESS, TrainConfig, TrainJob
from pea.train.gauges import TrainGauges

log = logging.getLogger("pea.train")


class _Models:
    """The frozen models a worker needs, loaded once: the UNet and the DDPM training scheduler always; the text
    encoders unless the cache holds their outputs (it holds the language's own encoder's: a job on an encoder
    variant encodes its captions itself); the VAE only when features were not cached. `unet` is the
    frozen UNet behind HookedUNet for PEA and its ablations, None for a baseline, whose UNet (`base_unet`)
    becomes part of the trainable module, and for a compression job, whose teacher it is (`compression`, set
    when the student is built)."""

    def __init__(self, job: TrainJob, device: torch.device, storage: Storage):
        from pea.features import FeatureExtractor, TextFeatures
        from pea.languages import get_language
        from pea.models.encoders import load_text_encoder
        from pea.models.loading import load_frozen_pipeline
        from pea.presets import get_preset

        preset = get_preset(job.preset)
        cache = Path(job.model_cache)
        cached_text = job.cached and _cached_text(storage, job) and job.adapter.encoder_variant is None
        student = _student_unet(storage, job) if job.train.unet_from else None  # distilling against a student
        if cached_text:
            unet, scheduler_config = _unet(preset, cache, device, student)
            self.null, self.text = load_null(storage, job.lang, job.preset), None
        else:  # the VAE only when no latents were cached; the UNet from the pipeline either way
            pipe = load_frozen_pipeline(preset, cache, device, **({"vae": None} if job.cached else {}),
                                        **({"unet": student} if student is not None else {}))
            spec = preset.student_for(get_language(job.lang), job.adapter.encoder_variant)
            student = load_text_encoder(spec, cache).to(device)
            student.model.to(dtype=pipe.text_encoder.dtype)
            self.text = TextFeatures(pipe, student)
            unet, scheduler_config, self.null = pipe.unet, pipe.scheduler.config, self.text.null()
        self.extractor = None if job.cached else FeatureExtractor(pipe, student)
        self.sdxl = preset.family == "sdxl"
        self.scheduler = training_scheduler(scheduler_config)
        unet.to(device)
        if job.train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if device.type == "cpu":
            unet.to(memory_format=torch.channels_last)
        self.base_unet = unet
        whole_unet = job.train.method in UNET_PARTS or job.train.method == COMPRESS
        self.unet = None if whole_unet else HookedUNet(unet, job.train.kd_config().feature_blocks)
        self.compression: Compression | None = None
        self.null = self.null.to(device)

    def batch(self, raw, device, generator) -> KDBatch:
        """A loader batch -> the KD step's inputs on `device`: latents drawn from the cached distribution with
        the worker's generator (so a resumed run draws the same), captions encoded unless cached."""
        if self.extractor is not None:
            return self.extractor(raw["images"].to(device), raw["english"], raw["native"], raw["culture"].to(device),
                                  time_ids=raw["time_ids"].to(device), keys=raw["keys"], generator=generator)
        latents = LatentDistribution(raw.latents.mean.to(device), raw.latents.std.to(device)).sample(generator)
        text = self.text(raw.english, raw.native) if self.text is not None else raw.text
        text = {k: v.to(device) if v is not None else None for k, v in text.items()}
        return kd_batch(latents, text, raw.culture.to(device), raw.time_ids.to(device), raw.keys, self.sdxl)


def _cached_text(storage: Storage, job: TrainJob) -> bool:
    """Whether the feature shards hold the text embeddings (their manifest says); refuses an older cache."""
    from pea.data.cache import FORMAT

    manifest = storage.read_json(*job.data_prefix, "manifest.json")
    if manifest.get("format") != FORMAT:
        raise PeaError(f"the {job.lang}/{job.preset} features were cached by an older pea",
                       f"delete {storage.uri(*job.data_prefix)} and run `pea cache --lang {job.lang}` again")
    return manifest["text_embeddings"]


def _unet(preset, cache: Path, device: torch.device, student=None):
    """The UNet alone (in half precision on a GPU: no fp32 copy of 2.6 B frozen weights re-cast on every pass
    under autocast), or `student` in its place cast the same way, and the scheduler's config."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from pea.models.loading import pipeline_source
    from pea.models.precision import frozen_dtype

    source = pipeline_source(preset, cache)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    dtype = frozen_dtype(device.type, bf16)
    unet = (student.to(dtype=dtype) if student is not None
            else UNet2DConditionModel.from_pretrained(source, subfolder="unet", dtype=dtype))
    return unet, DDPMScheduler.load_config(source, subfolder="scheduler")


def _student_unet(storage: Storage, job: TrainJob):
    """The compression run `job.train.unet_from`'s student UNet, read from its folder in storage, every key present."""
    from pea.compress.student import read_student

    return read_student(storage, job.lang, job.train.unet_from)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _any_rank(flag: bool, device) -> bool:
    if not _distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _loss(model, models, batch, kd: KDConfig, generator, step: int) -> KDResult:
    """The KD step around the frozen UNet for PEA and its ablations; the SD loss of the whole trainable module
    (bridge + UNet part) for a baseline; BK-SDM's loss of the student against the teacher for compression."""
    if models.compression is not None:
        c = models.compression
        return compress_step(model, c.teacher, batch, models.scheduler, c.taps, c.losses, models.null, generator, step)
    if isinstance(getattr(model, "module", model), FineTuned):
        return sd_step(model, models.scheduler, batch, models.null, kd, generator, step)
    return kd_step(models.unet, model, models.scheduler, batch, models.null, kd, generator, step)


def micro_step(model, models, batch, kd: KDConfig, cfg: TrainConfig, generator, step: int, sync: bool,
               autocast=nullcontext()) -> KDResult | None:
    """One forward and backward of a micro-batch; None when the loss was not finite and `on_nonfinite` is
    skip (on every rank alike, so no rank waits in an all-reduce the others skipped).

    `model` is the trainable module as the optimizer's step sees it: DDP-wrapped with several workers. The step
    calls it (never `model.module`), so DDP's gradient hooks fire and backward all-reduces the mean gradient;
    `sync=False` (a micro-batch before the last of an accumulation) defers that with `no_sync`.
    """
    defer = model.no_sync() if (not sync and hasattr(model, "no_sync")) else nullcontext()
    with defer:
        try:
            with autocast:
                result = _loss(model, models, batch, kd, generator, step)
        except NonFiniteLossError as e:
            if cfg.on_nonfinite == "raise":
                raise
            log.warning("skipping batch: %s", e)
            result = None
        if _any_rank(result is None, batch.latents.device):
            return None
        (result.loss / cfg.grad_accum).backward()
    return result


def optimizer_step(model, optimizer, schedule, max_grad_norm: float) -> None:
    torch.nn.utils.clip_grad_norm_(trainable_parameters(model), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def check_replicas_agree(module: torch.nn.Module, device) -> None:
    """Every rank must hold the same trainable weights (DDP keeps them equal); a checksum compared across ranks
    at each checkpoint catches a loop that trains independent copies and would save rank 0's alone."""
    if not _distributed():
        return
    total = torch.stack([p.detach().double().sum() for p in trainable_parameters(module)]).sum().to(device)
    low, high = total.clone(), total.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.isclose(low, high, rtol=1e-9, atol=1e-9):
        raise RuntimeError(f"trainable replicas differ across ranks (checksums {low.item()} .. {high.item()})")


@dataclass
class LogWindow:
    """Loss terms and throughput over the steps since the last log line. `samples` counts all workers."""

    start: float = field(default_factory=time.perf_counter)
    sums: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    steps: int = 0

    def add(self, terms: dict[str, float], samples: int, weight: float) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
        self.samples += samples

    def metrics(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()} | {"samples_per_s": self.samples / elapsed}


def eta_seconds(cfg: TrainConfig, step: int, world: int, global_samples_per_s: float) -> float:
    """Remaining samples of all workers over the throughput of all workers."""
    remaining = (cfg.steps - step) * cfg.batch_size * cfg.grad_accum * world
    return remaining / max(global_samples_per_s, 1e-9)


class WorkerLoop:
    """What Ray Train runs on every worker: train_loop_per_worker, with the MLflow tracking URI kept out of the
    job. Ray keeps a run's train_loop_config in its state API and shows it on its dashboard, and the URI may hold
    a password; it travels only inside this (pickled) callable, whose repr hides it."""

    def __init__(self, tracking_uri: str):
        self._tracking_uri = tracking_uri

    def __repr__(self) -> str:
        return "WorkerLoop(tracking_uri='***')"

    def __call__(self, config: dict) -> None:
        train_loop_per_worker(config, self._tracking_uri)


def train_loop_per_worker(config: dict, tracking_uri: str) -> None:
    job = TrainJob.model_validate(config["job"])
    cfg, kd = job.train, job.train.kd_config()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    storage = Storage(job.storage_root, endpoint_url=job.s3_endpoint_url)
    models = _Models(job, device, storage)
    trained, optimizer, schedule, generator, state, resumed = _trainable(job, models, device, rank)
    model = ray.train.torch.prepare_model(trained, move_to_device=False)
    shards = read_index(storage, job.data_prefix, job.index)
    loader = BucketBatchLoader(storage, job.data_prefix, shards, cfg.batch_size,
                               features_batch if job.cached else image_batch, rank, world, cfg.seed,
                               cfg.shuffle_buffer)
    if loader.batches_per_epoch() == 0:
        raise ValueError(f"rank {rank} gets no full batch of {cfg.batch_size}: lower batch_size or add data")
    bar = _progress(job, rank, state.step)
    gauges = TrainGauges(job.lang, job.run_name) if rank == 0 else None
    mlflow = tracking.client(tracking_uri) if rank == 0 else None  # rank 0 logs the run's metrics
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    window, micro, position = LogWindow(), 0, state.position
    while state.step < cfg.steps:
        for position, raw in loader(position):
            batch = models.batch(raw, device, generator)
            last_micro = (micro + 1) % cfg.grad_accum == 0
            result = micro_step(model, models, batch, kd, cfg, generator, state.step, sync=last_micro,
                                autocast=autocast)
            if result is None:
                optimizer.zero_grad(set_to_none=True)
                micro = 0
                continue
            micro += 1
            window.add(result.terms, len(batch.keys) * world, 1 / cfg.grad_accum)
            if not last_micro:
                continue
            optimizer_step(model, optimizer, schedule, cfg.max_grad_norm)
            state.step += 1
            state.samples += cfg.batch_size * cfg.grad_accum * world
            state.position = position
            window.steps += 1
            if bar is not None:
                bar.update(1)
            if job.switches.fault_at_step == state.step and rank == 0 and not resumed:
                raise RuntimeError(f"chaos drill: rank 0 dies at step {state.step}")
            finished = state.step >= cfg.steps
            if state.step % cfg.log_every == 0 or finished:
                _log_window(job, window, schedule, state, device, world, gauges, mlflow)
                window = LogWindow()
            if state.step % cfg.checkpoint_every == 0 or finished:
                check_replicas_agree(trained, device)
                _report(job, trained, optimizer, schedule, state, generator_states(generator, device), rank)
                if gauges is not None:
                    gauges.checkpointed()
            if finished:
                break
        else:
            position = Position(position.epoch + 1, 0)
            state.position = position
    if bar is not None:
        bar.close()


def _trainable(job: TrainJob, models: _Models, device, rank: int):
    """`training_objects`, restored from Ray's checkpoint if any, with the state and the checkpoint."""
    trained, optimizer, schedule, generator = training_objects(job, models, device, rank)
    state = TrainState()
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as folder:
            state = load_checkpoint(Path(folder), trained, optimizer, schedule, generator, rank)
    return trained, optimizer, schedule, generator, state, resumed


def training_objects(job: TrainJob, models: _Models, device, rank: int):
    """The trainable module (pea.baselines.build_trainable; a compression job's student, pea.compress.trainable),
    AdamW on its trainable parameters, the warm-up + cosine schedule and the rank's noise generator."""
    from transformers import get_cosine_schedule_with_warmup

    cfg = job.train
    if cfg.method == COMPRESS:
        trained, models.compression = compression(models.base_unet, cfg.recipe, cfg.compress,
                                                  bool(cfg.gradient_checkpointing))
    else:
        trained = build_trainable(cfg.method, PEAAdapter(job.adapter).to(device), models.base_unet, cfg.lora_rank)
    optimizer = torch.optim.AdamW(trainable_parameters(trained), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank)
    return trained, optimizer, schedule, generator


def _log_window(job, window: LogWindow, schedule, state: TrainState, device, world: int, gauges, mlflow) -> None:
    """The window's metrics to MLflow and the gauges: rank 0 holds both, the other ranks log nothing."""
    metrics = window.metrics() | {"lr": schedule.get_last_lr()[0], "step": state.step, "samples": state.samples}
    if device.type == "cuda":
        metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if mlflow is None:
        return
    _log_metrics(mlflow, job.mlflow_run_id, metrics, state.step)
    gauges.observe(metrics, device)
    if job.switches.progress == "log":
        eta = eta_seconds(job.train, state.step, world, metrics["samples_per_s"])
        log.info("step %d/%d loss %.4f samples/s %.1f eta %.0fs", state.step, job.train.steps,
                 metrics.get("loss", float("nan")), metrics["samples_per_s"], eta)


def _progress(job: TrainJob, rank, start):
    if rank != 0 or job.switches.progress != "bar":
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=job.train.steps, desc="train", unit="step")  # Ray's bar takes no `initial`
    bar.update(start)  # a resumed job starts where its checkpoint left off
    return bar


def _log_metrics(mlflow, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def generator_states(generator: torch.Generator, device) -> list[torch.Tensor]:
    """Every rank's noise generator state, in rank order (an all-gather: each rank's noise shapes the shared
    gradient, so a resumed run needs them all to continue exactly)."""
    own = generator.get_state()
    if not _distributed():
        return [own]
    gathered = [torch.empty_like(own, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, own.to(device))
    return [g.cpu() for g in gathered]


def _report(job: TrainJob, trained, optimizer, schedule, state, generator_states, rank) -> None:
    metrics = {"step": state.step}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp), trained, optimizer, schedule, state, generator_states, job.config)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step-{state.step:08d}")
