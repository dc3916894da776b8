"""Build the toy world's models from a seed: a teacher that draws from English prompts with SDXL's structure
(VAE; two CLIP text towers whose penultimate states make the context and whose second gives the pooled
embedding; a UNet conditioned on them and on size/crop time ids; the real repo's Euler scheduler and
`force_zeros_for_empty_prompt`), one student text encoder per language (and a multilingual one) trained
CLIP-style on native captions without the teacher (so it understands its language but lives in another space,
as the paper's language CLIPs do), and the judge. Saved in the hub's layouts, then loaded like any other model.
"""

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from pea.errors import PeaError
from pea.models import tiny
from pea.progress import FRACTION
from pea.resources import resource_path
from pea.toy import judge as judge_module
from pea.toy import world
from pea.toy.judge import Judge, to_tensor, train_judge
from pea.toy.world import (LANGS, MULTILINGUAL, SIZE, TOY_LANGS, caption, culture_scenes, general_scenes, render,
                           sample_scenes)

log = logging.getLogger("pea.toy")
TOKEN_WEIGHT = 10.0  # the multilingual student's token term (token_contrastive); measured in the README's toy section
MULTILINGUAL_STEPS = 3  # x student_steps, for the student that reads six languages (measured in the README's toy section)
STUDENT_TOKENS = 80  # bytes + EOS of the longest caption in any language (a Russian one: 78 bytes)
LAYOUT = "sdxl"  # the real repo whose model_index.json and scheduler.json the teacher takes


class ToyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # sized for ~4 minutes on 2 CPU cores (the teacher ~0.23 s/step at batch 64); measured: the teacher's
    # judge score is 0.87 at 1000 steps, 0.69 at 500 (lr 2e-3), 0.68 with half the UNet's channels
    seed: int = 0
    images: int = 6000
    batch: int = 64
    vae_steps: int = 120
    teacher_steps: int = 1000
    teacher_lr: float = 1e-3
    student_steps: int = 250
    judge_steps: int = 400
    threads: int | None = None


def digest(cfg: ToyConfig) -> str:
    """Changes whenever the world's code or the build config changes."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for module in (world, judge_module, tiny):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    for name in ("toy", LAYOUT):
        for path in sorted(resource_path("configs", name).glob("*.json")):
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _config(name: str) -> dict:
    return json.loads(resource_path("configs", "toy", name).read_text())


def _report(message: str, fraction: float) -> None:
    """Build progress as log records carrying the fraction done (pea.progress): the CLI's stage line shows
    them, and a caller without a log handler stays quiet."""
    log.info("toy world: %s", message, extra={FRACTION: fraction})


def train_vae(vae, images: torch.Tensor, cfg: ToyConfig):
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step in range(cfg.vae_steps):
        x = images[torch.randint(0, len(images), (cfg.batch,))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0:
            _report(f"VAE step {step}/{cfg.vae_steps}, reconstruction {loss.item():.4f}", 0.1 * step / cfg.vae_steps)
    return vae.eval().requires_grad_(False)


def _sdxl_condition(pipe, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 64) context and (B, 32) pooled, as StableDiffusionXLPipeline.encode_prompt makes them: both
    towers' penultimate states concatenated, the pooled embedding from the second tower's projection."""
    first = pipe.text_encoder(ids, output_hidden_states=True)
    second = pipe.text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], -1), second.text_embeds


def train_teacher(pipe, latents: torch.Tensor, captions: list[str], cfg: ToyConfig) -> None:
    """Both text towers and the UNet trained together on English captions, with DDPM noise as SDXL was; 10% of
    rows get the zero conditioning that `force_zeros_for_empty_prompt` gives guidance at sampling time."""
    from pea.distill import training_scheduler
    from pea.features import default_time_ids

    noise_scheduler = training_scheduler(pipe.scheduler.config)
    modules = (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.teacher_lr, total_steps=cfg.teacher_steps, pct_start=0.05)
    tokens = [tok(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
              for tok in (pipe.tokenizer, pipe.tokenizer_2)]
    time_ids = default_time_ids(cfg.batch, SIZE, SIZE)
    for m in modules:
        m.train()
    for step in range(cfg.teacher_steps):
        idx = torch.randint(0, len(latents), (cfg.batch,))
        x0 = latents[idx]
        context, pooled = _sdxl_condition(pipe, tokens[0][idx], tokens[1][idx])
        keep = (torch.rand(cfg.batch) >= 0.1).float()
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch,))
        pred = pipe.unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=context * keep[:, None, None],
                         added_cond_kwargs={"text_embeds": pooled * keep[:, None], "time_ids": time_ids}).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        if step % 50 == 0:
            _report(f"teacher step {step}/{cfg.teacher_steps}, loss {loss.item():.4f}",
                    0.1 + 0.85 * step / cfg.teacher_steps)
    for m in modules:
        m.eval().requires_grad_(False)


class _ImageTower(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(64 * 8 * 8, dim))

    def forward(self, x):
        return self.net(x)


def _student_captions(lang: str, scenes: list, rng: random.Random) -> list[str]:
    """Native captions; the multilingual student reads every language and English, one picked per sample."""
    if lang != MULTILINGUAL:
        return [caption(s, lang) for s in scenes]
    return [caption(s, world.culture_lang(s) if s.culture_word else rng.choice([*LANGS, "en"])) for s in scenes]


def token_contrastive(tokens: torch.Tensor, mask: torch.Tensor, image: torch.Tensor, target: torch.Tensor):
    """Cross-entropy of every real token picking its image on its own: tokens (B, L, D) projected states, mask
    (B, L), image (B, D) normalised, target (B, B) rows of positives. The multilingual adapter learns from
    English captions and is asked in other languages; it reads token states, and a student aligned through its
    pooled embedding alone lays out each language's tokens its own way. With every token carrying the scene in
    the shared space, another language's tokens look like English ones to the adapter (AltCLIP gets there by
    distilling CLIP's English encoder on parallel text, which the toy does not have)."""
    logits = torch.einsum("bld,kd->blk", F.normalize(tokens, dim=-1), image) / 0.07
    per_token = -(target.unsqueeze(1) * logits.log_softmax(-1)).sum(-1)
    return (per_token * mask).sum() / mask.sum()


def train_student(lang: str, cfg: ToyConfig):
    """A byte-level T5 encoder trained CLIP-style on (image, native caption) pairs, culture items included; the
    multilingual one also on every token (token_contrastive)."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    rng = random.Random(f"{cfg.seed}-{lang}")
    torch.manual_seed(rng.randrange(2**31))
    scenes = sample_scenes(cfg.images // 2, rng, general_scenes() + culture_scenes(lang) * 4)
    images = to_tensor([render(s, rng) for s in scenes])
    tokenizer = ByT5Tokenizer()
    tok = tokenizer(_student_captions(lang, scenes, rng), padding="max_length", max_length=STUDENT_TOKENS,
                    truncation=True, return_tensors="pt")
    model = T5EncoderModel(T5Config(**_config("student.json")))
    tower, proj = _ImageTower(64), nn.Linear(64, 64)
    params = [*model.parameters(), *tower.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    steps = cfg.student_steps * (MULTILINGUAL_STEPS if lang == MULTILINGUAL else 1)
    for step in range(steps):
        idx = torch.randint(0, len(scenes), (cfg.batch,))
        states = model(input_ids=tok.input_ids[idx], attention_mask=tok.attention_mask[idx]).last_hidden_state
        mask = tok.attention_mask[idx].unsqueeze(-1).float()
        text = F.normalize(proj((states * mask).sum(1) / mask.sum(1)), dim=-1)
        image = F.normalize(tower(images[idx]), dim=-1)
        logits = text @ image.T / 0.07
        # scenes repeat within a batch (in any language); pairs showing the same scene are all positives
        same = torch.tensor([[scenes[i] == scenes[j] for j in idx] for i in idx], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        if lang == MULTILINGUAL:
            loss = loss + TOKEN_WEIGHT * token_contrastive(proj(states), mask.squeeze(-1), image, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            _report(f"{lang} student step {step}/{steps}, contrastive loss {loss.item():.3f}", step / steps)
    return model.eval(), tokenizer


def build_toy(out: Path, cfg: ToyConfig = ToyConfig()) -> Path:
    """Build the teacher (teacher/) and the judge (judge.safetensors) under `out`, atomically; students are
    built when a language first needs one (ensure_student)."""
    from safetensors.torch import save_file

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = random.Random(cfg.seed)
    pipe = tiny.make_pipeline("toy", seed=cfg.seed, layout=LAYOUT)
    scenes = sample_scenes(cfg.images, rng, general_scenes())
    images = to_tensor([render(s, rng) for s in scenes])
    vae = train_vae(pipe.vae, images, cfg)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    train_teacher(pipe, latents * scaling, [caption(s, "en") for s in scenes], cfg)
    pipe.save_pretrained(tmp / "teacher", safe_serialization=True)
    _report("judge", 0.95)
    judge = train_judge(cfg.seed, n=cfg.images, steps=cfg.judge_steps, batch=cfg.batch)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, tmp / "judge.safetensors")
    (tmp / "config.json").write_text(cfg.model_dump_json(indent=2))
    _report(f"built {out.name}", 1.0)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_toy(model_cache: Path, cfg: ToyConfig = ToyConfig()) -> Path:
    """The toy world for `cfg`, built once and then found by the digest of its code and config."""
    folder = Path(model_cache) / f"toy-{digest(cfg)}"
    if not (folder / "config.json").exists():
        build_toy(folder, cfg)
    return folder


def ensure_student(world_dir: Path, lang: str) -> Path:
    """The world's student encoder for `lang` (student-<lang>/), trained on first use from the world's seed,
    so a run for one language builds one student; written under a temporary name, then renamed."""
    if lang not in TOY_LANGS:
        raise PeaError(f"the toy world has no {lang!r} student encoder", f"use one of: {', '.join(TOY_LANGS)}")
    folder = world_dir / f"student-{lang}"
    if (folder / "config.json").exists():
        return folder
    cfg = ToyConfig.model_validate_json((world_dir / "config.json").read_text())
    model, tokenizer = train_student(lang, cfg)
    tmp = world_dir / f".student-{lang}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not (folder / "config.json").exists():  # another process may have finished first
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_judge(folder: Path) -> Judge:
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict(load_file(folder / "judge.safetensors"))
    return judge.eval()
