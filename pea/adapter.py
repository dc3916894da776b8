"""The PEA adapter: a small MLP from a frozen student text encoder into the UNet's conditioning space.

Paper Sec. 3.3, with the layer layout of the official code (OPPO-Mente-Lab/PEA-Diffusion, class MLP in
train_sd_zh.py and train_sdxl_zh.py): LayerNorm on the student's token states, then bias-free Linear layers
with GELU between them.
- SD1.5 family: the last Linear gives the context directly (in -> 2048 -> 2048 -> 768, ~7.9 M for a 1024-d
  student).
- SDXL family: the last Linear gives `pooled_dim`-wide (1280) token states; their token mean is the pooled
  embedding, and GELU then a Linear (with bias) to the context width (2048) gives the context
  (in -> 1024 -> 1024 -> 1280 -> 2048, ~6.0 M for a 1024-d student).
One difference from the official code, on purpose: the pooled mean is over real tokens only (the official
code averages padding too), so the pooled embedding of a prompt does not depend on the padded window.
Saved as safetensors + a JSON config; never pickled.
"""

from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from pea.errors import PeaError
from pea.kd_types import Conditioning
from pea.storage import write_files

WEIGHTS = "adapter.safetensors"
CONFIG = "adapter.json"

# Widths and depth an adapter.json may ask for. The config decides what is allocated (hidden_dims [4000000]
# would be ~2 GB, [10**12] an allocator crash), so it is bounded before anything is built. Real widths are at
# most a few thousand (SDXL's context 2048, 4096-d LLM encoders) and the official MLP has 2-3 hidden layers.
MAX_WIDTH = 65536
MAX_HIDDEN_LAYERS = 16
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]


class AdapterConfig(BaseModel):
    """Dimensions plus what the adapter was trained for (checked again when it is loaded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_dim: Width  # student encoder's hidden size
    context_dim: Width  # UNet cross-attention width (768 SD1.5, 2048 SDXL)
    pooled_dim: Width | None = None  # SDXL pooled text embedding (1280), None for SD1.5
    # the bias-free hidden Linear widths
    hidden_dims: tuple[Width, ...] = Field((1024, 1024), min_length=1, max_length=MAX_HIDDEN_LAYERS)
    language: str | None = None
    student_encoder: str | None = None
    # the language's encoder variant it was trained on (pea.languages), None: the language's own encoder; left out
    # of adapter.json when None, so a default adapter's file stays what older pea versions read
    encoder_variant: str | None = Field(None, exclude_if=lambda v: v is None)
    base_model: str | None = None


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, C), (B, L) -> (B, C): the mean over real tokens only."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class PEAAdapter(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.LayerNorm(config.input_dim)]
        width = config.input_dim
        for hidden in config.hidden_dims:
            layers += [nn.Linear(width, hidden, bias=False), nn.GELU()]
            width = hidden
        token_width = config.pooled_dim or config.context_dim
        layers.append(nn.Linear(width, token_width, bias=False))
        self.mlp = nn.Sequential(*layers)
        self.context_head = (
            nn.Sequential(nn.GELU(), nn.Linear(token_width, config.context_dim)) if config.pooled_dim else None
        )

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> Conditioning:
        """states (B, L, input_dim), mask (B, L) -> context (B, L, context_dim), pooled (B, pooled_dim) or None."""
        tokens = self.mlp(states)
        if self.context_head is None:
            return Conditioning(context=tokens)
        return Conditioning(context=self.context_head(tokens), pooled=masked_mean(tokens, mask))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, folder: Path, elsewhere: str = "save the adapter to another folder") -> Path:
        """Write weights and config to `folder` atomically (temporary names, then renames). A write the disk
        refuses is a PeaError naming the file, with `elsewhere` in its fix (the caller knows where else to go)."""
        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # serialized here and written by write_files: safetensors' own file writer reports a full disk as a
        # SafetensorError, not the OSError that names the cause
        write_files({str(folder / WEIGHTS): safetensors_bytes(state, metadata={"format": "pt"}),
                     str(folder / CONFIG): self.config.model_dump_json(indent=2).encode()}, elsewhere)
        return folder


def _expect(name: str, got, want, fix: str) -> None:
    if want is not None and got != want:
        raise PeaError(f"adapter {name} is {got}, but this model needs {want}", fix)


def read_config(folder: Path) -> AdapterConfig:
    """The adapter.json of `folder`, validated (widths bounded): reads no weights, so it is instant."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise PeaError(f"{folder} holds no adapter ({CONFIG} + {WEIGHTS})", "point --adapter at a saved adapter folder")
    try:
        return AdapterConfig.model_validate_json((folder / CONFIG).read_text(encoding="utf-8"))
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or "the file"
        raise PeaError(f"{folder / CONFIG} is not a valid adapter config ({field}: {err['msg']})",
                       "re-export the adapter") from e
    except UnicodeDecodeError as e:
        raise PeaError(f"{folder / CONFIG} is not a valid adapter config ({e})", "re-export the adapter") from e


def _check_config(
    config: AdapterConfig,
    input_dim: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    language: str | None = None,
) -> None:
    """Refuse an adapter that does not fit the encoder (input_dim), the UNet (context/pooled) or the language."""
    if language and config.language and config.language != language:
        raise PeaError(
            f"this adapter was trained for {config.language!r}, not {language!r}",
            f"use --lang {config.language} or an adapter trained for {language}",
        )
    _expect("input width", config.input_dim, input_dim, "use the student encoder it was trained with")
    _expect("context width", config.context_dim, context_dim, "use the base model family it was trained for")
    _expect("pooled width", config.pooled_dim, pooled_dim, "use the base model family it was trained for")


def _read_weights(path: Path, config: AdapterConfig) -> dict[str, torch.Tensor]:
    """The weights, once the safetensors header's shapes match the config's, so a config that disagrees with
    its weights costs no memory: the expected shapes come from an adapter built on the meta device (e.g.
    mlp.1.weight (hidden_dims[0], input_dim)), the file's from its header."""
    with torch.device("meta"):
        expected = {k: list(v.shape) for k, v in PEAAdapter(config).state_dict().items()}
    try:
        with safe_open(path, framework="pt") as f:
            found = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            key = next((k for k in sorted(expected.keys() | found.keys()) if expected.get(k) != found.get(k)), None)
            if key is not None:
                raise PeaError(f"{path} does not match its {CONFIG}: {key} is {found.get(key, 'absent')} in the "
                               f"weights, {expected.get(key, 'absent')} by the config", "re-export the adapter")
            return {k: f.get_tensor(k) for k in found}
    except (SafetensorError, OSError, ValueError) as e:
        raise PeaError(f"{path} is not a readable safetensors file ({e})",
                       "re-export or re-download the adapter") from e


def load_adapter(
    folder: Path,
    input_dim: int | None = None,
    context_dim: int | None = None,
    pooled_dim: int | None = None,
    language: str | None = None,
) -> PEAAdapter:
    """Load an adapter and check it fits the encoder (input_dim), the UNet (context/pooled) and the language.
    Everything is checked from adapter.json and the weights' header before any tensor is allocated."""
    folder = Path(folder)
    config = read_config(folder)
    _check_config(config, input_dim, context_dim, pooled_dim, language)
    state = _read_weights(folder / WEIGHTS, config)
    adapter = PEAAdapter(config)
    adapter.load_state_dict(state)
    return adapter
