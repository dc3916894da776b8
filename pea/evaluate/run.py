"""Evaluate a candidate adapter the way the paper does (Sec. 4.2): images for the MG and MC prompt sets from
the candidate and its baselines, with the same seed per prompt, scored in batches by every metric of the suite.

Systems: `candidate` (native prompt -> student encoder + adapter) and `champion` (the registered champion's
adapter, when there is one) always, then those of `cfg.systems` in its order (pea/evaluate/systems.py):
`teacher_en` (the English prompt through the base model's own encoder; MG only, the upper reference),
`translate` (native -> MT -> English -> base model) and external systems drawing from the native prompt.
Images land under `out`, one PNG per (set, system, prompt, image), so the report can show them side by side.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pea.evaluate.config import EvalConfig
from pea.evaluate.prompts import EvalPrompt
from pea.evaluate.suites import Suite
from pea.evaluate.systems import ALWAYS, BASELINES, Draw
from pea.evaluate.table import build_table
from pea.progress import Progress, quiet


@dataclass
class EvalResult:
    metrics: dict[str, dict[str, float]]  # system -> "<set>_<metric>" -> mean score
    prompts: dict[str, list[EvalPrompt]]  # set -> the prompts that were scored
    images: Path  # <images>/<set>/<system>/<prompt id>-<k>.png
    primary: str
    guard: str
    notes: list[str] = field(default_factory=list)  # e.g. why the champion could not be evaluated
    skipped: dict[str, str] = field(default_factory=dict)  # system -> why it was not scored
    order: list[str] = field(default_factory=list)  # the systems' rows, as the evaluation listed them

    @property
    def table(self) -> dict:
        return build_table(self.metrics, self.skipped, self.order)

    def to_json(self) -> dict:
        return {"metrics": self.metrics, "primary": self.primary, "guard": self.guard, "notes": self.notes,
                "skipped": self.skipped, "table": self.table,
                "prompts": {k: [p.__dict__ for p in v] for k, v in self.prompts.items()}}


def image_path(root: Path, set_name: str, system: str, prompt: EvalPrompt, k: int) -> Path:
    return root / set_name / system / f"{prompt.id}-{k}.png"


def _draw(call, texts: list[str], seeds: list[int], cfg: EvalConfig, device: str) -> list:
    """One batch of images; image i is drawn from seed i, whichever system draws it."""
    import torch

    generators = [torch.Generator(device).manual_seed(s) for s in seeds]
    return call(texts, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, generator=generators).images


def _scored(system: str, set_name: str) -> bool:
    return system != "teacher_en" or set_name == "mg"  # the English teacher is the MG reference only


def evaluate(pipe, candidate, champion, suite: Suite, cfg: EvalConfig, out: Path, progress: Progress = quiet,
             notes: list[str] | None = None, external: dict[str, Draw] | None = None,
             skipped: dict[str, str] | None = None) -> EvalResult:
    """`pipe` is the base diffusers pipeline; `candidate` and `champion` are PEAPipelines around it (champion
    may be None); `external` the loaded external systems of cfg.systems, `skipped` why the others were not
    (each also becomes a note). Returns the mean of every metric per system. Progress goes to `progress` only
    (no bars of its own): one line per (set, system) scored, with the fraction of the evaluation done."""
    device = str(pipe.device)
    pipe.set_progress_bar_config(disable=True)
    skipped = dict(skipped or {})
    systems: dict[str, Callable] = {"candidate": lambda t, **kw: candidate(t, **kw)}
    if champion is not None:
        systems["champion"] = lambda t, **kw: champion(t, **kw)
    for name in cfg.systems:
        if name in BASELINES:
            systems[name] = lambda t, **kw: pipe(prompt=t, **kw)
        elif name in (external or {}):
            systems[name] = external[name]
        else:
            skipped.setdefault(name, "not loaded: the caller gave no draw function for it (systems.load_external)")
    metrics: dict[str, dict[str, float]] = {s: {} for s in systems}
    units = [(set_name, system) for set_name in suite.sets for system in systems
             if _scored(system, set_name)]  # one (set, system) scored per progress step
    for set_name, prompts in suite.sets.items():
        k_range = range(cfg.images_per_prompt)
        items = [(p, k) for p in prompts for k in k_range]
        seeds = [cfg.seed + i for i in range(len(items))]
        english_of = {p.id: t for p, t in zip(prompts, suite.translate(prompts))} if "translate" in systems else {}
        for system, call in systems.items():
            if not _scored(system, set_name):
                continue
            texts = {"teacher_en": [p.english for p, _ in items], "translate": [english_of.get(p.id) for p, _ in items]}.get(
                system, [p.native for p, _ in items])
            images = []
            for start in range(0, len(items), cfg.batch_size):
                images += _draw(call, texts[start : start + cfg.batch_size], seeds[start : start + cfg.batch_size],
                                cfg, device)
            for (p, k), image in zip(items, images):
                path = image_path(out, set_name, system, p, k)
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
            for scorer in suite.scorers[set_name]:
                side = [getattr(p, scorer.text) for p, _ in items]
                scores = []
                for start in range(0, len(items), cfg.batch_size):
                    scores += scorer(images[start : start + cfg.batch_size], side[start : start + cfg.batch_size])
                metrics[system][f"{set_name}_{scorer.name}"] = sum(scores) / len(scores)
            progress(f"  {set_name} {system}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in metrics[system].items() if k.startswith(set_name)),
                fraction=(units.index((set_name, system)) + 1) / len(units))
    notes = list(notes or []) + [f"{system} skipped: {why}" for system, why in skipped.items()]
    return EvalResult(metrics=metrics, prompts=dict(suite.sets), images=out, primary=suite.primary,
                      guard=suite.guard, notes=notes, skipped=skipped, order=list(ALWAYS + cfg.systems))
