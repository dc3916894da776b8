"""The dtypes frozen models run in, and how many images the cache stage encodes at once.

pea never trains the base model or the encoders, so on a GPU they need no fp32 master weights: half
precision halves their memory and runs the matmuls at tensor-core speed, where fp32 weights under autocast
would keep the fp32 copy resident and cast every weight on every forward. Pure functions, so the decisions
are testable without a GPU; the callers pass the device type and what the GPU supports.
"""

from collections.abc import Mapping

import torch

CACHE_RESERVED_BYTES = 8 * 2**30  # resident weights (SDXL's encoders + VAE + a large student) and allocator slack
VAE_LIVE_MAPS = 6  # full-resolution 128-channel feature maps alive at once in the VAE encoder's first block
VAE_FIRST_CHANNELS = 128  # block_out_channels[0] of the SD1.5 and SDXL VAEs
MAX_CACHE_BATCH = 64


def default_device() -> str:
    """Where frozen models run in this process: the GPU when there is one (each Ray worker sees its own)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def frozen_dtype(device_type: str, bf16_supported: bool = True) -> torch.dtype:
    """Half precision on a GPU: bf16 where the GPU has it (fp32's exponent range, so nothing overflows),
    else fp16. fp32 on a CPU, where half-precision kernels are slow or missing."""
    if device_type != "cuda":
        return torch.float32
    return torch.bfloat16 if bf16_supported else torch.float16


def vae_dtype(vae_config: Mapping, family: str, device_type: str, bf16_supported: bool = True) -> torch.dtype:
    """fp32 for an SDXL-family VAE whose config says force_upcast (the SDXL VAE's activations overflow fp16;
    diffusers honours the flag in its SDXL pipelines only); a fine-tuned one such as madebyollin's
    sdxl-vae-fp16-fix sets it false and runs in half. SD1.5's VAE runs in half: diffusers gives every VAE
    force_upcast=True by default, so the flag says nothing on that family."""
    if family == "sdxl" and vae_config.get("force_upcast", False):
        return torch.float32
    return frozen_dtype(device_type, bf16_supported)


def cache_batch_size(side: int, vae: torch.dtype, gpu_memory_bytes: int) -> int:
    """Images per cache-stage batch that fit on the GPU at `side` x `side` pixels: what is left after the
    resident weights, divided by the VAE encoder's peak activations per image (its widest maps are at full
    resolution; the text encoders' activations are negligible next to them)."""
    bytes_per_element = torch.finfo(vae).bits // 8
    per_image = VAE_LIVE_MAPS * VAE_FIRST_CHANNELS * side * side * bytes_per_element
    return max(1, min(MAX_CACHE_BATCH, int(gpu_memory_bytes - CACHE_RESERVED_BYTES) // per_image))
