"""What a compressed UNet costs next to its teacher: parameters, multiply-accumulates per denoising step and CPU
latency. The real architectures are measured on the meta device (shapes only, no weights, no memory), so
SD1.5's and SDXL's numbers come from the configs pea ships without a download."""

import statistics
import time

from pea.resources import resource_path

FAMILY_CONFIG = {"sd15": ("configs", "sd15", "unet.json"), "sdxl": ("configs", "sdxl", "unet.json")}
TEXT_TOKENS = 77  # CLIP's context length in every SD1.5/SDXL repo
SDXL_TIME_IDS = 6  # original size, crop top-left, target size (diffusers' add_time_ids)


def real_unet_config(family: str) -> dict:
    """The real teacher UNet's config.json as pea ships it (pea/resources/configs/<family>/unet.json)."""
    import json

    return json.loads(resource_path(*FAMILY_CONFIG[family]).read_text())


def meta_unet(config: dict):
    """A UNet2DConditionModel of `config` on the meta device: every shape of the real model, no storage."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def step_inputs(unet, latent_side: int, batch: int = 1, device="meta") -> dict:
    """One denoising step's inputs for `unet`: latents (B, in_channels, side, side), a timestep per sample,
    the text context (B, 77, cross_attention_dim) and, for SDXL's text_time conditioning, the pooled text
    embedding (B, projection_dim - 6 x time_embed_dim) and the six size/crop time ids (B, 6)."""
    import torch

    cfg = unet.config
    inputs = {"sample": torch.zeros(batch, cfg.in_channels, latent_side, latent_side, device=device),
              "timestep": torch.full((batch,), 999, device=device),
              "encoder_hidden_states": torch.zeros(batch, TEXT_TOKENS, cfg.cross_attention_dim, device=device)}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - SDXL_TIME_IDS * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, device=device),
                                       "time_ids": torch.zeros(batch, SDXL_TIME_IDS, device=device)}
    return inputs


def macs_per_step(unet, latent_side: int) -> dict[str, int]:
    """Multiply-accumulates of one forward at batch 1 (FLOPs / 2, torch.utils.flop_counter): `total`, and
    `without_attention_scores`, which leaves out the attention's QK^T and AV products. BK-SDM counted MACs
    with thop (Nota-NetsPresso/BK-SDM src/count_macs_params.py), which sees only modules such as Conv2d and
    Linear, so the second is the one to set next to the paper's numbers."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs = step_inputs(unet, latent_side, device=next(unet.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(**inputs)
    by_op = counter.get_flop_counts()["Global"]
    # QK^T and AV: batched matmuls (scaled_dot_product_attention's math path, the one the meta device takes)
    # or the fused attention ops; Linear layers count as mm/addmm, convolutions as convolution
    attention = sum(flops for op, flops in by_op.items() if op is torch.ops.aten.bmm or "attention" in str(op))
    total = counter.get_total_flops()
    return {"total": total // 2, "without_attention_scores": (total - attention) // 2}


def cpu_latency(unet, latent_side: int, repeats: int = 5) -> float:
    """Median seconds of one forward at batch 1 on the CPU (after one warm-up forward): for tiny and toy
    UNets, whose real-size counterparts are timed on a GPU."""
    import torch

    unet = unet.to("cpu").eval()
    inputs = step_inputs(unet, latent_side, device="cpu")
    times = []
    with torch.no_grad():
        unet(**inputs)
        for _ in range(repeats):
            start = time.perf_counter()
            unet(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)
