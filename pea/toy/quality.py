"""Measure the method in the toy world: how well generated images show what the prompt asked.

Every number is the judge's mean score over generated images (chance ~0.22, faithful ~1.0):
teacher_en (English prompts, the upper reference), student_untrained, student_pea (after KD of the adapter
alone), translate_baseline (native -> dictionary English -> teacher), and the same on culture prompts.
"""

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pea.adapter import AdapterConfig, PEAAdapter
from pea.conditioning import StudentConditioner, TeacherConditioner
from pea.distill import HookedUNet, KDConfig, kd_step, training_scheduler
from pea.inference import PEAPipeline
from pea.kd_types import KDBatch, NullConditioning
from pea.languages import EncoderSpec
from pea.models.encoders import TextEncoder, load_text_encoder
from pea.toy.build import STUDENT_TOKENS, load_judge
from pea.toy.judge import Judge, to_tensor
from pea.toy.world import (Scene, caption, culture_scenes, dictionary_english, general_scenes, render,
                           sample_scenes)


@dataclass
class ToyModels:
    pipe: object  # the teacher's StableDiffusionPipeline
    judge: Judge
    folder: Path

    @classmethod
    def load(cls, folder: Path) -> "ToyModels":
        from diffusers import StableDiffusionPipeline

        from pea.models.loading import freeze

        pipe = freeze(StableDiffusionPipeline.from_pretrained(folder / "teacher"))
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe=pipe, judge=load_judge(folder), folder=folder)

    def student(self, lang: str) -> TextEncoder:
        spec = EncoderSpec(id=str(self.folder / f"student-{lang}"), loader="transformers:T5EncoderModel",
                           tokenizer="transformers:ByT5Tokenizer", hidden_size=64, max_tokens=STUDENT_TOKENS)
        return load_text_encoder(spec, self.folder)

    def adapter(self, lang: str, hidden: tuple[int, ...] = (256,)) -> PEAAdapter:
        torch.manual_seed(0)
        return PEAAdapter(AdapterConfig(input_dim=64, context_dim=self.pipe.unet.config.cross_attention_dim,
                                        hidden_dims=hidden, language=lang))


def score(models: ToyModels, conditioner, prompts: list[str], scenes: list[Scene], seed: int = 0,
          steps: int = 20, guidance: float = 4.0, batch: int = 48) -> float:
    """Mean judge score of one image per (prompt, scene), generated through the standard pipeline."""
    pipe = PEAPipeline(models.pipe, conditioner)
    scores = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        out = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                   generator=torch.Generator().manual_seed(seed + start))
        images = out.images * 2 - 1
        scores.append(models.judge.score(images, scenes[start : start + batch]))
    return float(torch.cat(scores).mean())


def kd_data(models: ToyModels, student: TextEncoder, lang: str, n: int, culture_share: float, seed: int) -> KDBatch:
    """Rendered scenes with cached features: parallel general samples and native-only culture samples."""
    rng = random.Random(seed)
    n_culture = int(n * culture_share)
    scenes = sample_scenes(n - n_culture, rng, general_scenes()) + sample_scenes(n_culture, rng, culture_scenes(lang))
    images = to_tensor([render(s, rng) for s in scenes])
    vae = models.pipe.vae
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 256]).latent_dist.sample()
                             for i in range(0, n, 256)]) * vae.config.scaling_factor
    teacher = TeacherConditioner(models.pipe)
    english = [caption(s, "en") if not s.culture_word else "" for s in scenes]
    t_ctx = torch.cat([teacher(english[i : i + 512]).context for i in range(0, n, 512)])
    encoded = [student.encode([caption(s, lang) for s in scenes[i : i + 512]]) for i in range(0, n, 512)]
    return KDBatch(latents=latents, teacher_context=t_ctx, teacher_pooled=None,
                   student_states=torch.cat([e.states for e in encoded]), student_mask=torch.cat([e.mask for e in encoded]),
                   culture=torch.tensor([s.culture_word is not None for s in scenes]), time_ids=None,
                   keys=[f"{i}" for i in range(n)])


def train_adapter(models: ToyModels, student: TextEncoder, adapter: PEAAdapter, data: KDBatch, cfg: KDConfig,
                  steps: int, batch: int = 64, lr: float = 2e-3, seed: int = 0) -> float:
    """KD of the adapter alone on in-memory cached features; returns minutes taken."""
    start = time.perf_counter()
    empty = student.encode([""])
    null = NullConditioning(teacher_context=TeacherConditioner(models.pipe)([""]).context, student_states=empty.states,
                            student_mask=empty.mask)
    unet = HookedUNet(models.pipe.unet, cfg.feature_blocks)
    noise_scheduler = training_scheduler(models.pipe.scheduler.config)
    opt = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    n = data.latents.shape[0]
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        b = KDBatch(latents=data.latents[idx], teacher_context=data.teacher_context[idx], teacher_pooled=None,
                    student_states=data.student_states[idx], student_mask=data.student_mask[idx],
                    culture=data.culture[idx], time_ids=None, keys=[data.keys[i] for i in idx])
        result = kd_step(unet, adapter, noise_scheduler, b, null, cfg, gen, step)
        opt.zero_grad()
        result.loss.backward()
        opt.step()
        schedule.step()
    adapter.eval()
    return (time.perf_counter() - start) / 60


def prompts_for(scenes: list[Scene], lang: str) -> list[str]:
    return [caption(s, lang) for s in scenes]


def translated(scenes: list[Scene], lang: str) -> list[str]:
    return [dictionary_english(s, lang) for s in scenes]


def student_conditioner(student: TextEncoder, adapter: PEAAdapter) -> StudentConditioner:
    return StudentConditioner(student, adapter, zero_null=False)


def teacher_conditioner(models: ToyModels) -> TeacherConditioner:
    return TeacherConditioner(models.pipe)

