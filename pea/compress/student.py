"""A block-removed student UNet from a teacher UNet and a recipe: its diffusers config, its weights copied
from the teacher's kept blocks, and its saved form.

The weight copy follows BK-SDM's (Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py,
copy_weight_from_teacher): the student's j-th layer of a stage takes the teacher's j-th kept layer, its up
stage i the teacher's up stage i + levels_removed, everything else the same key. Every student tensor must
come from the teacher with the same shape, or the copy fails naming the key: a student that is silently
half random would distil from a worse start than the paper's and nobody would see why.
"""

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pea.compress.recipes import Layers, Recipe
from pea.errors import PeaError

_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
_UPSAMPLER = re.compile(r"^up_blocks\.(\d+)\.(upsamplers\..+)$")
_DEFAULT_MID = "UNetMidBlock2DCrossAttn"  # diffusers' default when a config leaves mid_block_type out


@dataclass(frozen=True)
class _Teacher:
    """The teacher's stage layout, read from its config: per level (outermost first) its down layers, per up
    stage (innermost first) its up layers, and the transformer depth of each layer's attention."""

    down_depth: Layers
    up_depth: Layers
    mid_depth: int

    @property
    def levels(self) -> int:
        return len(self.down_depth)


@dataclass(frozen=True)
class _Plan:
    """The recipe resolved against one teacher: teacher layer indices kept per student stage."""

    down: Layers
    up: Layers
    offset: int  # student up stage i is the teacher's up stage i + offset


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def _read_teacher(config: dict) -> _Teacher:
    """The layout diffusers' UNet2DConditionModel.__init__ builds from `config` (layers_per_block and
    transformer_layers_per_block may be ints, per-level lists, or per-layer lists with a separate
    reverse_transformer_layers_per_block for the up stages, as SSD-1B's)."""
    levels = len(config["down_block_types"])
    layers = _per_level(config.get("layers_per_block", 2), levels)
    depth = _per_level(config.get("transformer_layers_per_block", 1), levels)
    down = tuple(tuple(_per_level(d, layers[i])) for i, d in enumerate(depth))
    reverse = config.get("reverse_transformer_layers_per_block")
    up_source = reverse if reverse is not None else list(reversed(depth))
    up = tuple(tuple(_per_level(d, layers[levels - 1 - i] + 1)) for i, d in enumerate(up_source))
    return _Teacher(down, up, _per_level(depth[-1], 1)[0])


def _stage_error(recipe: Recipe, problem: str) -> PeaError:
    return PeaError(f"compression recipe {recipe.name!r}: {problem}",
                    "fix the recipe in pea/resources/compress.yaml to name only layers its teacher has")


def _check_family(config: dict, recipe: Recipe) -> None:
    family = "sdxl" if config.get("addition_embed_type") == "text_time" else "sd15"
    if family != recipe.family:
        raise PeaError(f"compression recipe {recipe.name!r} is for {recipe.family} UNets, the teacher is {family}",
                       f"use a {family} recipe")


def _kept(recipe: Recipe, what: str, given: Layers | None, teacher: Layers, count: int) -> Layers:
    """`given` (teacher layer indices per stage) checked against the teacher's stages, or all of them."""
    stages = given if given is not None else tuple(tuple(range(len(t))) for t in teacher[:count])
    if len(stages) != count:
        raise _stage_error(recipe, f"{what} lists {len(stages)} stages, the student has {count}")
    for i, (kept, layers) in enumerate(zip(stages, teacher)):
        if not kept or list(kept) != sorted(set(kept)):
            raise _stage_error(recipe, f"{what} stage {i} keeps {list(kept)}: give increasing layer indices")
        if kept[-1] >= len(layers):
            raise _stage_error(recipe, f"{what} stage {i} has no layer {kept[-1]} (the teacher's has "
                                       f"{len(layers)}: 0..{len(layers) - 1})")
    return stages


def _plan(config: dict, recipe: Recipe) -> _Plan:
    _check_family(config, recipe)
    teacher = _read_teacher(config)
    r = recipe.levels_removed
    if not 0 <= r < teacher.levels:
        raise _stage_error(recipe, f"cannot remove {r} of the teacher's {teacher.levels} levels")
    count = teacher.levels - r
    down = _kept(recipe, "down", recipe.down, teacher.down_depth, count)
    up = _kept(recipe, "up", recipe.up, teacher.up_depth[r:], count)
    for i, kept in enumerate(up):
        last = len(teacher.up_depth[i + r]) - 1
        if len(kept) != len(down[count - 1 - i]) + 1:
            raise _stage_error(recipe, f"up stage {i} keeps {len(kept)} layers, its down stage "
                                       f"{len(down[count - 1 - i])}: diffusers builds an up stage with one more")
        if kept[0] != 0 or kept[-1] != last:
            raise _stage_error(recipe, f"up stage {i} must keep its first and last layers (0 and {last}): their "
                                       f"input widths differ from the others'")
    return _Plan(down, up, r)


def _depths(recipe: Recipe, what: str, given: Layers | None, plan_stages: Layers, teacher: Layers) -> Layers:
    """Transformer blocks per kept layer: the recipe's, each no deeper than the teacher layer it comes from."""
    kept_depth = tuple(tuple(t[j] for j in kept) for kept, t in zip(plan_stages, teacher))
    if given is None:
        return kept_depth
    if [len(s) for s in given] != [len(s) for s in kept_depth]:
        raise _stage_error(recipe, f"{what} gives depths for {[len(s) for s in given]} layers per stage, the "
                                   f"student keeps {[len(s) for s in kept_depth]}")
    for i, (depths, limits) in enumerate(zip(given, kept_depth)):
        if any(not 1 <= d <= limit for d, limit in zip(depths, limits)):
            raise _stage_error(recipe, f"{what} stage {i} asks for depths {list(depths)}, the teacher's layers "
                                       f"have {list(limits)}")
    return given


def _mid_type(config: dict, recipe: Recipe) -> str | None:
    return {"keep": config.get("mid_block_type", _DEFAULT_MID), "remove": None, "resnet": "UNetMidBlock2D"}[
        recipe.mid]


def student_config(teacher_unet_config: dict, recipe: Recipe) -> dict:
    """The diffusers UNet2DConditionModel config of `recipe`'s student of a teacher with this config. For the
    BK-SDM recipes on SD1.5's config it holds what the released students' unet/config.json hold
    (Nota-NetsPresso/BK-SDM src/unet_config/bk_{base,small,tiny}/config.json: layers_per_block 1,
    mid_block_type UNetMidBlock2DCrossAttn / null / null, bk_tiny's three 320/640/1280 CrossAttn stages)."""
    config = {k: v for k, v in teacher_unet_config.items() if not k.startswith("_")}
    plan = _plan(config, recipe)
    teacher = _read_teacher(config)
    count, r = teacher.levels - plan.offset, plan.offset
    down_depth = _depths(recipe, "down_depth", recipe.down_depth, plan.down, teacher.down_depth)
    up_depth = _depths(recipe, "up_depth", recipe.up_depth, plan.up, teacher.up_depth[r:])
    out = dict(config, down_block_types=list(config["down_block_types"][:count]),
               up_block_types=list(config["up_block_types"][r:]), mid_block_type=_mid_type(config, recipe))
    for key in ("block_out_channels", "attention_head_dim", "num_attention_heads", "cross_attention_dim",
                "only_cross_attention"):
        if isinstance(config.get(key), (list, tuple)):
            out[key] = list(config[key][:count])
    widths = [len(kept) for kept in plan.down]
    out["layers_per_block"] = widths[0] if len(set(widths)) == 1 else widths
    if recipe.down_depth or recipe.up_depth or config.get("reverse_transformer_layers_per_block") is not None:
        out["transformer_layers_per_block"] = [list(d) for d in down_depth]
        out["reverse_transformer_layers_per_block"] = [list(d) for d in up_depth]
    elif isinstance(config.get("transformer_layers_per_block"), (list, tuple)):
        out["transformer_layers_per_block"] = list(config["transformer_layers_per_block"][:count])
    _check_mid_depth(recipe, teacher, out)
    return out


def _check_mid_depth(recipe: Recipe, teacher: _Teacher, student: dict) -> None:
    """A kept mid block must stay the teacher's: diffusers gives it the depth of the last down stage's first
    layer, which a depth cut or a removed level would silently change."""
    depth = _per_level(_per_level(student.get("transformer_layers_per_block", 1),
                                  len(student["down_block_types"]))[-1], 1)[0]
    if recipe.mid == "keep" and depth != teacher.mid_depth:
        raise _stage_error(recipe, f"the kept mid block would get {depth} transformer blocks instead of the "
                                   f"teacher's {teacher.mid_depth}")


def weight_sources(teacher_unet_config: dict, recipe: Recipe, student_keys) -> dict[str, str]:
    """Student state-dict key -> the teacher key it is copied from (transformer blocks keep their index: a
    depth cut keeps each attention's first blocks)."""
    plan = _plan({k: v for k, v in teacher_unet_config.items() if not k.startswith("_")}, recipe)
    return {key: _source(key, plan) for key in student_keys}


def _source(key: str, plan: _Plan) -> str:
    if m := _LAYER.match(key):
        part, stage, kind, layer, rest = m.groups()
        stage, layer = int(stage), int(layer)
        kept = plan.down if part == "down_blocks" else plan.up
        teacher_stage = stage if part == "down_blocks" else stage + plan.offset
        return f"{part}.{teacher_stage}.{kind}.{kept[stage][layer]}.{rest}"
    if m := _UPSAMPLER.match(key):
        return f"up_blocks.{int(m.group(1)) + plan.offset}.{m.group(2)}"
    return key


def make_student(teacher_unet, recipe: Recipe):
    """`recipe`'s student of `teacher_unet`: a diffusers UNet2DConditionModel with trainable weights that are
    copies of the teacher's kept blocks (same device and dtype as the teacher's)."""
    import torch
    from diffusers import UNet2DConditionModel

    config = student_config(dict(teacher_unet.config), recipe)
    with torch.device("meta"):  # no random init: every tensor is assigned from the teacher below
        student = UNet2DConditionModel.from_config(config)
    teacher_state = teacher_unet.state_dict()
    sources = weight_sources(dict(teacher_unet.config), recipe, student.state_dict())
    student.load_state_dict(_copied(student.state_dict(), teacher_state, sources, recipe), strict=True, assign=True)
    left = [name for name, t in [*student.named_parameters(), *student.named_buffers()] if t.is_meta]
    if left:
        raise PeaError(f"student of recipe {recipe.name!r} has tensors no teacher weight filled: {left[:5]}",
                       "report this: the student UNet has state outside its state dict")
    return student.requires_grad_(True)


def _copied(student_state: dict, teacher_state: dict, sources: dict[str, str], recipe: Recipe) -> dict:
    """Every student key's teacher tensor, key by key; a key the teacher lacks or a shape that differs fails.
    Copies, never views: the student is trained while the teacher stays frozen."""
    copied = {}
    for key, target in student_state.items():
        source = sources[key]
        if source not in teacher_state:
            raise _stage_error(recipe, f"student weight {key} maps to {source}, which the teacher does not have")
        if teacher_state[source].shape != target.shape:
            raise _stage_error(recipe, f"student weight {key} {tuple(target.shape)} maps to {source} "
                                       f"{tuple(teacher_state[source].shape)}: the shapes differ")
        copied[key] = teacher_state[source].detach().clone()
    return copied


def save_student(unet, folder: str | Path) -> Path:
    """Save `unet` as a diffusers UNet folder (config.json + diffusion_pytorch_model.safetensors) that
    UNet2DConditionModel.from_pretrained loads on its own, with no missing or unexpected keys. Written under
    a temporary name and renamed, so an interrupted save never leaves a half-written student."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# A student inside a training checkpoint or a run's output: diffusers' UNet folder under unet/, weights last
# (their presence marks a finished write, as an adapter's weights do)
STUDENT_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors")


def student_files(unet, folder: Path) -> dict[str, bytes]:
    """`unet`'s diffusers folder as bytes by path under `folder` (for pea.storage.write_files, which reports a
    full disk clearly): the config.json save_pretrained writes and the safetensors file it writes (the state
    dict in its own dtype, metadata format pt), so from_pretrained reads it with nothing missing."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    config, weights = STUDENT_FILES
    return {str(Path(folder) / config): unet.to_json_string().encode(),
            str(Path(folder) / weights): save(state, metadata={"format": "pt"})}


def load_student_weights(unet, folder: Path) -> None:
    """The weights student_files wrote under `folder`, into `unet` (same architecture), every key present."""
    from safetensors.torch import load_file

    state = load_file(Path(folder) / STUDENT_FILES[1])
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PeaError(f"student checkpoint {folder} does not fit the recipe's student: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}", "resume with the recipe it was started with, or a new run name")


def copy_student(storage, lang: str, run_name: str, dst: Path) -> Path:
    """The compression run `run_name`'s student, copied from its output folder in storage (pea.layout.adapter_dir)
    to `dst`/unet (from_pretrained and MLflow read local files); a run with no finished student fails."""
    from pea.layout import adapter_dir

    folder = adapter_dir(lang, run_name)
    if not storage.exists(*folder, *STUDENT_FILES[1].split("/")):
        raise PeaError(f"no student UNet of compression run {run_name!r} for {lang!r} under {storage.uri(*folder)}",
                       f"run `pea compress --recipe <recipe> --lang {lang}` (the same run name finishes it)")
    for name in STUDENT_FILES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(storage.read_bytes(*folder, *name.split("/")))
    return dst / "unet"


def load_student(folder: Path):
    """A saved student (a diffusers UNet folder) as UNet2DConditionModel, every weight from the file: one the
    file lacks or has in another shape is an error, never random init (pea.models.loading.load_weights_strictly)."""
    from diffusers import UNet2DConditionModel

    from pea.models.loading import load_weights_strictly

    return load_weights_strictly(UNet2DConditionModel, str(folder))


def read_student(storage, lang: str, run_name: str):
    """The compression run `run_name`'s student UNet, read from storage (through a local temporary copy)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load_student(copy_student(storage, lang, run_name, Path(tmp)))


def frozen_like(unet, reference):
    """`unet` frozen, in eval mode, on `reference`'s device and in its dtype (cast only when it differs: diffusers
    warns on any dtype given to `to`)."""
    same = unet.dtype == reference.dtype
    unet = unet.to(reference.device) if same else unet.to(reference.device, reference.dtype)
    return unet.eval().requires_grad_(False)
