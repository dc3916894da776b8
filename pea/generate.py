"""`pea generate`: one image from a native prompt and a saved adapter, on a preset's base model."""

from pathlib import Path

from pea.conditioning import check_prompts
from pea.errors import PeaError
from pea.languages import get_language
from pea.presets import Preset
from pea.profiles import Profile


def generate_image(
    prompt: str, lang: str, adapter_dir: Path, out: Path, profile: Profile, preset: Preset,
    negative: str = "", steps: int = 30, guidance: float = 5.0, seed: int = 0,
) -> Path:
    import torch

    from pea.inference import PEAPipeline
    from pea.models.precision import default_device

    check_prompts([prompt])
    if out.suffix.lower() != ".png":
        raise PeaError(f"output {out} is not a .png path", "give --out a file name ending in .png")
    language = get_language(lang)
    device = default_device()
    # a broken adapter, or one for another preset or language, fails before any model loads
    pipe = PEAPipeline.from_preset(adapter_dir, language, preset, profile.model_cache).to(device)
    generator = torch.Generator(device).manual_seed(seed)
    image = pipe(prompt, negative_prompt=negative or None, num_inference_steps=steps,
                 guidance_scale=guidance, generator=generator).images[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(out)
    return out
