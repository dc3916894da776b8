"""The paper's fine-tuning baselines (Sec. 4.2, Table 1 SDXL rows, Appendix 9.2 / Table 7), trained by the same
engine as PEA: `wkwv` (only the UNet cross-attention key/value projections, Custom-Diffusion style, paper ref.
[15]) and `lora` (LoRA on the UNet through peft). Both put the language encoder in place of the English one and
train with the SD loss alone on the language's data (every sample, no teacher pass).

The bridge. The language encoder's states (B, Ls, D) do not have the UNet's conditioning widths: SDXL wants a
(B, L, 2048) context (`cross_attention_dim`) and a (B, 1280) pooled `text_embeds` (SD1.5 a (B, L, 768) context
only). The paper does not say how its baselines bridge this; both need some map, since LoRA keeps every layer's
width and Wk/Wv take the context width as input. Here the bridge is the PEA adapter's own architecture
(pea.adapter.PEAAdapter: LayerNorm + MLP to the pooled width, its token mean as `text_embeds`, GELU + Linear to
the context width), freshly initialised and trained jointly with the UNet part. So a baseline differs from PEA
only in what the paper compares: the objective (SD loss instead of KD) and what else is trained (K/V or LoRA
instead of nothing), not in the capacity of the map from the encoder.

They change the UNet, so they are no plug-ins: the trained UNet part is saved next to the bridge (adapter.json +
adapter.safetensors) in a format diffusers loads, and `candidate_pipeline` puts it on a copy of a pipeline's
UNet that shares every untouched tensor, leaving the pipeline the other systems draw with as it was.
"""

import copy
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from pea.adapter import PEAAdapter, load_adapter
from pea.distill import (
    KDConfig,
    KDResult,
    NonFiniteLossError,
    add_noise,
    diffusion_target,
    dropout_rows,
    per_sample_mse,
    student_conditioning,
)
from pea.errors import PeaError
from pea.kd_types import KDBatch, NullConditioning
from pea.storage import write_files

# The SD loss (paper Eq. 1) on every sample, with the CFG dropout of PEA's training and no teacher terms.
SD_LOSS = KDConfig(output_kd=0, feature_kd=0, sd_on_parallel=True, feature_blocks=())
KV_FILE = "unet_kv.safetensors"  # the attn2 to_k/to_v weights under their UNet2DConditionModel state-dict names
LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE, what load_lora_weights reads
# diffusers examples/text_to_image/train_text_to_image_lora_sdxl.py (read at commit 58eb52c0): LoraConfig(
# r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=[...]), --rank default 4
LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
KV_MODULES = ("attn2.to_k", "attn2.to_v")  # cross-attention: its key/value take the text context (Custom Diffusion)
LORA_ADAPTER = "candidate"  # the adapter name a LoRA candidate is loaded under at inference


def _kv_parameters(unet) -> dict[str, nn.Parameter]:
    """The cross-attention key/value projections' parameters, by their UNet state-dict names."""
    return {f"{name}.{p_name}": p for name, module in unet.named_modules() if name.endswith(KV_MODULES)
            for p_name, p in module.named_parameters()}


def _train_in_fp32(unet) -> None:
    """Trainable parameters in fp32 on a half-precision UNet (diffusers' cast_training_params): AdamW on bf16
    weights would lose updates smaller than their rounding step."""
    from diffusers.training_utils import cast_training_params

    cast_training_params(unet, dtype=torch.float32)


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise PeaError(f"{path} is not a readable safetensors file ({e})", "re-export the model") from e


class KVPart:
    """Only the UNet's cross-attention K/V projections train; saved under their own state-dict names."""

    method, file = "wkwv", KV_FILE

    def attach(self, unet, rank: int) -> None:
        unet.requires_grad_(False)
        for p in _kv_parameters(unet).values():
            p.requires_grad_(True)
        _train_in_fp32(unet)

    def state(self, unet) -> dict[str, torch.Tensor]:
        return {k: p.detach().cpu().contiguous() for k, p in _kv_parameters(unet).items()}

    def save(self, unet, folder: Path, elsewhere: str) -> None:
        write_files({str(folder / KV_FILE): safetensors_bytes(self.state(unet), metadata={"format": "pt"})}, elsewhere)

    def load(self, unet, folder: Path) -> None:
        """The saved K/V weights into `unet`'s own; every K/V key must be there and nothing else."""
        saved, own = _read(folder / KV_FILE), _kv_parameters(unet)
        odd = sorted((saved.keys() ^ own.keys()) or {k for k in own if saved[k].shape != own[k].shape})
        if odd:
            raise PeaError(f"{folder / KV_FILE} does not fit this UNet ({', '.join(odd[:3])} differ)",
                           "use the base model the candidate was trained on")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(saved[k])

    def shared_copy(self, unet):
        return _copy_sharing(unet, keep_own=set(_kv_parameters(unet)))

    def apply(self, unet, folder: Path) -> None:
        self.load(unet, folder)


class LoraPart:
    """LoRA on the UNet's attention projections through peft, saved as diffusers' LoRA weights."""

    method, file = "lora", LORA_FILE

    def attach(self, unet, rank: int) -> None:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS)))
        _train_in_fp32(unet)

    def state(self, unet) -> dict[str, torch.Tensor]:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save(self, unet, folder: Path, elsewhere: str) -> None:
        """diffusers' own save_lora_weights (keys `unet.<module>.lora.down/up.weight`), its bytes written by
        write_files: safetensors' file writer reports a full disk as a SafetensorError."""
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        def write(weights: dict, path: str) -> None:
            write_files({path: safetensors_bytes(weights, metadata={"format": "pt"})}, elsewhere)

        StableDiffusionLoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=self.state(unet),
                                                         save_function=write)

    def load(self, unet, folder: Path) -> None:
        """Resume: the saved LoRA weights into `unet`'s adapter, as the diffusers script's load_model_hook does;
        the file must hold exactly the adapter's weights (same targets and rank)."""
        from diffusers.loaders import StableDiffusionLoraLoaderMixin
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft import set_peft_model_state_dict
        from peft.utils import get_peft_model_state_dict

        saved, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(str(folder), weight_name=LORA_FILE)
        state = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in saved.items()})
        own = get_peft_model_state_dict(unet)
        odd = sorted((state.keys() ^ own.keys()) or {k for k in own if state[k].shape != own[k].shape})
        if odd:
            raise PeaError(f"{folder / LORA_FILE} does not fit this UNet's LoRA ({', '.join(odd[:3])} differ)",
                           "resume with the lora_rank and base model the run started with")
        set_peft_model_state_dict(unet, state, adapter_name="default")

    def shared_copy(self, unet):
        return _copy_sharing(unet, keep_own=set())

    def apply(self, unet, folder: Path) -> None:
        """diffusers' LoRA loading into `unet` (not fused: the base weights it shares stay untouched)."""
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(str(folder), weight_name=LORA_FILE)
        StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, unet=unet, adapter_name=LORA_ADAPTER)


UNET_PARTS = {part.method: part for part in (KVPart(), LoraPart())}  # the methods pea.names.UNET_METHODS names
PART_FILES = tuple(part.file for part in UNET_PARTS.values())


def _copy_sharing(unet, keep_own: set[str]):
    """A copy of `unet`'s modules that shares every parameter and buffer but those named in `keep_own` (copied):
    deepcopy takes a tensor already in its memo as itself. Modules injected into the copy (LoRA layers) or
    tensors written into its own copies change nothing in `unet`."""
    tensors = unet.state_dict(keep_vars=True)
    memo = {id(t): t for name, t in tensors.items() if name not in keep_own}
    return copy.deepcopy(unet, memo)


def unet_part(folder: Path):
    """The UNet part saved in `folder` (KVPart, LoraPart), or None for a plug-in adapter."""
    found = [part for part in UNET_PARTS.values() if (Path(folder) / part.file).is_file()]
    if len(found) > 1:
        raise PeaError(f"{folder} holds both {found[0].file} and {found[1].file}", "keep the one the run trained")
    return found[0] if found else None


def candidate_pipeline(pipe, folder: Path):
    """`pipe` itself when `folder` holds a plug-in adapter; else a shallow copy of `pipe` (every component
    shared) whose UNet is a copy carrying the fine-tuned part. The copy shares all UNet tensors except the ones
    the part replaces (K/V: ~13% of SDXL's UNet; LoRA: none), so `pipe` keeps drawing as before for the systems
    that share it. (DiffusionPipeline.from_pipe would cast the shared components to fp32.)"""
    part = unet_part(folder)
    if part is None:
        return pipe
    unet = part.shared_copy(pipe.unet)
    part.apply(unet, Path(folder))
    candidate = copy.copy(pipe)
    candidate.unet = unet  # DiffusionPipeline.__setattr__ writes the copy's own config, not pipe's
    return candidate


class FineTuned(nn.Module):
    """The trainable whole of a baseline: the bridge and the UNet with its trainable part, as one module whose
    one forward per step runs both, so that one DDP wrapper synchronises all their gradients.

    The UNet's frozen weights are left out of DDP (`_set_params_and_buffers_to_ignore_for_model`): every rank
    loads them from the same files, and DDP would otherwise broadcast all of them (~5 GB on SDXL) when it wraps.
    """

    def __init__(self, bridge: PEAAdapter, unet, part):
        super().__init__()
        self.bridge, self.unet, self.part = bridge, unet, part
        frozen = [n for n, p in self.named_parameters() if not p.requires_grad] + [n for n, _ in self.named_buffers()]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, frozen)

    def forward(self, batch: KDBatch, null: NullConditioning, noisy: torch.Tensor, timesteps: torch.Tensor,
                drop: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) prediction for the noisy latents, conditioned through the bridge (B rows plus the empty
        prompt's, for the CFG dropout of the rows in `drop`)."""
        cond = student_conditioning(self.bridge, batch, null, drop)
        added = {"text_embeds": cond.pooled, "time_ids": batch.time_ids} if cond.pooled is not None else None
        return self.unet(noisy, timesteps, encoder_hidden_states=cond.context, added_cond_kwargs=added).sample

    def save(self, folder: Path, elsewhere: str = "save the model to another folder") -> Path:
        self.bridge.save(folder, elsewhere)
        self.part.save(self.unet, Path(folder), elsewhere)
        return Path(folder)

    def load(self, folder: Path) -> None:
        cfg = self.bridge.config
        self.bridge.load_state_dict(load_adapter(folder, cfg.input_dim, cfg.context_dim, cfg.pooled_dim).state_dict())
        self.part.load(self.unet, Path(folder))


def build_trainable(method: str, bridge: PEAAdapter, unet, lora_rank: int) -> nn.Module:
    """What a job trains: the adapter alone for PEA and its ablations (the UNet stays frozen and outside it);
    bridge + UNet part for a baseline. `unet` is changed in place for a baseline (parts marked trainable)."""
    part = UNET_PARTS.get(method)
    if part is None:
        return bridge
    part.attach(unet, lora_rank)
    return FineTuned(bridge, unet, part)


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def sd_step(student, scheduler, batch: KDBatch, null: NullConditioning, cfg: KDConfig,
            generator: torch.Generator | None = None, step: int = 0) -> KDResult:
    """The SD loss (Eq. 1) of one batch for a baseline; call .backward() on `loss`. `student` is a FineTuned,
    DDP-wrapped with several workers and called once. Noise, timesteps and CFG dropout are drawn as in
    pea.distill.kd_step, in the same order."""
    noised = add_noise(scheduler, batch.latents, cfg, generator)
    drop = dropout_rows(batch.latents.shape[0], cfg.cfg_dropout, generator, batch.latents.device)
    pred = student(batch, null, noised.noisy, noised.timesteps, drop)
    sd = per_sample_mse(pred, diffusion_target(scheduler, batch.latents, noised.noise, noised.timesteps)).mean()
    loss = cfg.sd * sd
    values = {"sd": float(sd.detach()), "loss": float(loss.detach())}
    if not torch.isfinite(loss):
        raise NonFiniteLossError(step, batch.keys, values)
    return KDResult(loss=loss, terms=values)
