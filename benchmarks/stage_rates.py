"""Per-GPU rates of the cache stage and of training's online text encoding, for the README's projection.

    python benchmarks/stage_rates.py --preset sdxl         # GPU: real SDXL architecture, random weights

vae_images_per_s_<side>: the cache stage's work (pea.features.latent_distribution: the VAE encoder's mean
  and std) at 512 and 1024 px, in the dtype the cache stage gives the VAE, at the batch it picks for an 80 GB GPU.
text_ms_per_batch / unet_step_ms: the frozen text encoders (teacher and student) on one batch of 16 prompts,
  against one UNet forward and backward of 16 latents at 1024 px (bf16 autocast): what encoding the captions
  online, instead of caching them, adds to a training step.
translate_captions_per_s: the translate stage's model (NLLB-200-distilled-600M's architecture from its config,
  random weights, fp32 as pea.data.translate.Translator loads it) at its batch of 32, 24 tokens in and exactly 32
  generated (a caption's length; random weights never stop early on their own).
The last line is one JSON object.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from kd_step import frozen_models
from pea.features import TextFeatures, latent_distribution
from pea.models.precision import cache_batch_size


def timed(fn, reps: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def vae_rate(vae, side: int, batch: int, reps: int) -> float:
    images = torch.rand(batch, 3, side, side, device=vae.device) * 2 - 1
    return batch / timed(lambda: latent_distribution(vae, images), reps)


def translate_rate(device, reps: int) -> float:
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    # facebook/nllb-200-distilled-600M's config.json
    config = M2M100Config(vocab_size=256206, d_model=1024, encoder_layers=12, decoder_layers=12,
                          encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                          decoder_ffn_dim=4096, max_position_embeddings=1024, scale_embedding=True,
                          activation_function="relu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2)
    model = M2M100ForConditionalGeneration(config).to(device).eval()
    ids = torch.randint(4, 256000, (32, 24), device=device)
    with torch.no_grad():
        seconds = timed(lambda: model.generate(ids, max_new_tokens=32, min_new_tokens=32, num_beams=1), reps)
    return 32 / seconds


def run(args) -> dict:
    device = torch.device("cuda")
    preset, pipe, student = frozen_models(args.preset, device, Path("pea-data/models"))
    out = {"preset": preset.name, "gpu": torch.cuda.get_device_name(), "vae_dtype": str(pipe.vae.dtype)}
    for side in (512, 1024):
        batch = min(64, cache_batch_size(side, pipe.vae.dtype, 80 * 2**30))
        out[f"vae_batch_{side}"], out[f"vae_images_per_s_{side}"] = batch, round(vae_rate(pipe.vae, side, batch, args.reps), 1)
        torch.cuda.empty_cache()
    out["translate_captions_per_s"] = round(translate_rate(device, args.reps), 1)
    torch.cuda.empty_cache()
    text = TextFeatures(pipe, student)
    captions = ["a watercolour painting of a red fox in the snow, evening light"] * 16
    out["text_ms_per_batch"] = round(timed(lambda: text(captions, captions), args.reps) * 1000, 1)
    encoded = text(captions, captions)
    latents = torch.randn(16, 4, 128, 128, device=device, dtype=pipe.unet.dtype)
    t = torch.full((16,), 500, device=device)
    added = {"text_embeds": encoded["teacher_pooled"], "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 16,
                                                                                device=device)}
    context = encoded["teacher_context"].clone().requires_grad_(True)  # a gradient flows as through the adapter

    def unet_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pipe.unet(latents, t, context, added_cond_kwargs=added).sample.float().mean().backward()

    pipe.unet.enable_gradient_checkpointing()
    out["unet_step_ms"] = round(timed(unet_step, args.reps) * 1000, 1)
    out["text_share_of_step"] = round(out["text_ms_per_batch"] / (out["text_ms_per_batch"] + out["unet_step_ms"]), 3)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sdxl")
    parser.add_argument("--reps", type=int, default=5)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
