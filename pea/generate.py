"""`pea generate`: one image from a native prompt and a saved adapter, on a preset's base model."""

import io
import os
import tempfile
from pathlib import Path

from pea.conditioning import check_prompts
from pea.errors import PeaError
from pea.languages import get_language
from pea.presets import Preset
from pea.profiles import Profile
from pea.storage import write_error, write_files

_ELSEWHERE = "give --out a path in a folder you can write to"


def generate_image(
    prompt: str, lang: str, adapter_dir: Path, out: Path, profile: Profile, preset: Preset,
    negative: str = "", steps: int = 30, guidance: float = 5.0, seed: int = 0,
) -> Path:
    check_prompts([prompt])
    check_out(out)
    import torch

    from pea.inference import PEAPipeline
    from pea.models.precision import default_device

    language = get_language(lang)
    device = default_device()
    # a broken adapter, or one for another preset or language, fails before any model loads
    pipe = PEAPipeline.from_preset(adapter_dir, language, preset, profile.model_cache).to(device)
    generator = torch.Generator(device).manual_seed(seed)
    image = pipe(prompt, negative_prompt=negative or None, num_inference_steps=steps,
                 guidance_scale=guidance, generator=generator).images[0]
    png = io.BytesIO()
    image.save(png, format="PNG")
    write_files({str(out): png.getvalue()}, _ELSEWHERE)
    return out


def check_out(out: Path) -> None:
    """Refuse an `out` that could not be written, before any model loads: the image is written only after
    minutes of loading and sampling, which a read-only folder or a mistyped path would throw away."""
    if out.suffix.lower() != ".png":
        raise PeaError(f"output {out} is not a .png path", "give --out a file name ending in .png")
    if out.is_dir():
        raise PeaError(f"output {out} is a folder", "give --out a file name ending in .png")
    try:
        _probe(_nearest_existing(out.parent.absolute()))
    except OSError as e:
        raise write_error(str(out), e, _ELSEWHERE) from e


def _nearest_existing(folder: Path) -> Path:
    """`folder`, or its nearest ancestor that exists: the one that must take the folders still to be created."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(folder: Path) -> None:
    """Create and remove a file in `folder`: a test that read-only mounts, permissions, ACLs and a file in the
    way all answer truly (os.access says yes to root on a folder that chmod made read-only, and names no reason)."""
    fd, path = tempfile.mkstemp(prefix=".pea-out-", suffix=".probe", dir=folder)
    os.close(fd)
    os.remove(path)
