"""Build the toy world's models from a seed: a teacher that draws from English prompts (VAE, CLIP text
encoder, cross-attention UNet: SD1.5's structure), one student text encoder per language trained CLIP-style
on native captions without the teacher (so it understands its language but lives in another space, as the
paper's language CLIPs do), and the judge. Saved in the hub's layouts, then loaded like any other model.
"""

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from pea.resources import resource_path
from pea.toy import judge as judge_module
from pea.toy import world
from pea.toy.judge import Judge, to_tensor, train_judge
from pea.toy.world import LANGS, caption, culture_scenes, general_scenes, render, sample_scenes

STUDENT_TOKENS = 64


class ToyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # sized for ~12 minutes on 2 CPU cores (VAE ~0.5 s/step, teacher ~0.35 s/step at batch 64)
    seed: int = 0
    images: int = 6000
    batch: int = 64
    vae_steps: int = 150
    teacher_steps: int = 1200
    teacher_lr: float = 1e-3
    student_steps: int = 250
    judge_steps: int = 400
    threads: int | None = None


def digest(cfg: ToyConfig) -> str:
    """Changes whenever the world's code or the build config changes."""
    h = hashlib.sha256(cfg.model_dump_json().encode())
    for module in (world, judge_module):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    for path in sorted(resource_path("configs", "toy").glob("*.json")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _config(name: str) -> dict:
    return json.loads(resource_path("configs", "toy", name).read_text())


def _log(msg: str, start: float) -> None:
    print(f"[toy {time.perf_counter() - start:6.0f}s] {msg}", flush=True)


def train_vae(images: torch.Tensor, cfg: ToyConfig, start: float):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(_config("vae.json"))
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step in range(cfg.vae_steps):
        x = images[torch.randint(0, len(images), (cfg.batch,))]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            _log(f"vae step {step} recon {loss.item():.4f}", start)
    return vae.eval().requires_grad_(False)


def _tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    from pea.models.clip_vocab import write_clip_tokenizer_files

    write_clip_tokenizer_files(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=_config("text_encoder.json")["max_position_embeddings"])


def train_teacher(latents: torch.Tensor, captions: list[str], tokenizer, cfg: ToyConfig, start: float):
    """Text encoder and UNet trained together on English captions (10% empty, for guidance)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(CLIPTextConfig(**_config("text_encoder.json")))
    unet = UNet2DConditionModel.from_config(_config("unet.json")).to(memory_format=torch.channels_last)
    noise_scheduler = DDPMScheduler.from_config(_config("scheduler.json"))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.teacher_lr, total_steps=cfg.teacher_steps, pct_start=0.05)
    ids = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    empty = tokenizer([""], padding="max_length", return_tensors="pt").input_ids
    for step in range(cfg.teacher_steps):
        idx = torch.randint(0, len(latents), (cfg.batch,))
        x0 = latents[idx]
        tokens = ids[idx].clone()
        tokens[torch.rand(cfg.batch) < 0.1] = empty
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch,))
        context = text_encoder(tokens).last_hidden_state
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        if step % 200 == 0:
            _log(f"teacher step {step} loss {loss.item():.4f}", start)
    return text_encoder.eval(), unet.eval()


class _ImageTower(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(64 * 8 * 8, dim))

    def forward(self, x):
        return self.net(x)


def train_student(lang: str, cfg: ToyConfig, start: float):
    """A byte-level T5 encoder trained CLIP-style on (image, native caption) pairs, culture items included."""
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    rng = random.Random(f"{cfg.seed}-{lang}")
    torch.manual_seed(rng.randrange(2**31))
    scenes = sample_scenes(cfg.images // 2, rng, general_scenes() + culture_scenes(lang) * 4)
    images = to_tensor([render(s, rng) for s in scenes])
    tokenizer = ByT5Tokenizer()
    tok = tokenizer([caption(s, lang) for s in scenes], padding="max_length", max_length=STUDENT_TOKENS,
                    truncation=True, return_tensors="pt")
    model = T5EncoderModel(T5Config(**_config("student.json")))
    tower, proj = _ImageTower(64), nn.Linear(64, 64)
    params = [*model.parameters(), *tower.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    for step in range(cfg.student_steps):
        idx = torch.randint(0, len(scenes), (cfg.batch,))
        states = model(input_ids=tok.input_ids[idx], attention_mask=tok.attention_mask[idx]).last_hidden_state
        mask = tok.attention_mask[idx].unsqueeze(-1).float()
        text = F.normalize(proj((states * mask).sum(1) / mask.sum(1)), dim=-1)
        image = F.normalize(tower(images[idx]), dim=-1)
        logits = text @ image.T / 0.07
        # captions repeat within a batch; pairs with the same caption are all positives
        same = (tok.input_ids[idx].unsqueeze(1) == tok.input_ids[idx].unsqueeze(0)).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    _log(f"student {lang}: contrastive loss {loss.item():.3f}", start)
    return model.eval(), tokenizer


def build_toy(out: Path, cfg: ToyConfig = ToyConfig()) -> Path:
    """Build everything under `out` (teacher/, student-<lang>/, judge.safetensors), atomically."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    scenes = sample_scenes(cfg.images, rng, general_scenes())
    images = to_tensor([render(s, rng) for s in scenes])
    vae = train_vae(images, cfg, start)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    tokenizer = _tokenizer(tmp / "_vocab")
    text_encoder, unet = train_teacher(latents * scaling, [caption(s, "en") for s in scenes], tokenizer, cfg, start)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler.from_config(_config("scheduler.json")),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp / "teacher", safe_serialization=True)
    shutil.rmtree(tmp / "_vocab")
    for lang in LANGS:
        model, tok = train_student(lang, cfg, start)
        model.save_pretrained(tmp / f"student-{lang}", safe_serialization=True)
        tok.save_pretrained(tmp / f"student-{lang}")
    judge = train_judge(cfg.seed, n=cfg.images, steps=cfg.judge_steps, batch=cfg.batch)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, tmp / "judge.safetensors")
    (tmp / "config.json").write_text(cfg.model_dump_json(indent=2))
    _log("built", start)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def ensure_toy(model_cache: Path, cfg: ToyConfig = ToyConfig()) -> Path:
    """The toy world for `cfg`, built once and then found by the digest of its code and config."""
    folder = Path(model_cache) / f"toy-{digest(cfg)}"
    if not (folder / "config.json").exists():
        build_toy(folder, cfg)
    return folder


def load_judge(folder: Path) -> Judge:
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict(load_file(folder / "judge.safetensors"))
    return judge.eval()
