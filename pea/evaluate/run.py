"""Evaluate a candidate adapter the way the paper does (Sec. 4.2): images for the MG and MC prompt sets from
the candidate and its baselines, with the same seed per prompt, scored in batches by every metric of the suite.

Systems: `candidate` (native prompt -> student encoder + adapter) and `champion` (the registered champion's
adapter, when there is one) always, then those of `cfg.systems` in its order (pea/evaluate/systems.py):
`teacher_en` (the English prompt through the base model's own encoder; MG only, the upper reference),
`translate` (native -> MT -> English -> base model) and external systems drawing from the native prompt.
Images land under `out`, one PNG per (set, system, prompt, image), so the report can show them side by side.
`score` does the drawing and scoring for any systems: a compressed student's evaluation (pea.compress.evaluate)
gives it its own.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pea.evaluate.config import EvalConfig
from pea.evaluate.prompts import EvalPrompt, english, native
from pea.evaluate.suites import Suite
from pea.evaluate.systems import ALWAYS, Draw
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


@dataclass(frozen=True)
class System:
    """One row of an evaluation: how it draws, what it is asked (the texts of a set's prompts, one each) and the
    sets it is scored on (None: all of the suite's)."""

    draw: Draw
    ask: Callable[[list[EvalPrompt]], list[str]] = native
    sets: tuple[str, ...] | None = None


def evaluate(pipe, candidate, champion, suite: Suite, cfg: EvalConfig, out: Path, progress: Progress = quiet,
             notes: list[str] | None = None, external: dict[str, Draw] | None = None,
             skipped: dict[str, str] | None = None, others: dict[str, Draw] | None = None) -> EvalResult:
    """`pipe` is the base diffusers pipeline; `candidate` and `champion` are PEAPipelines around it (champion
    may be None); `external` the loaded external systems of cfg.systems, `skipped` why the others were not
    (each also becomes a note); `others` more adapters asked in the language, scored after the champion (the
    teacher-trained adapter beside one distilled against a student). Returns the mean of every metric per system."""
    pipe.set_progress_bar_config(disable=True)  # progress goes to `progress` only
    skipped = dict(skipped or {})
    systems = {"candidate": System(lambda t, **kw: candidate(t, **kw))}
    if champion is not None:
        systems["champion"] = System(lambda t, **kw: champion(t, **kw))
    systems |= {name: System(draw) for name, draw in (others or {}).items()}
    base = lambda t, **kw: pipe(prompt=t, **kw)  # noqa: E731
    for name in cfg.systems:
        if name == "teacher_en":  # the English teacher is the MG reference only
            systems[name] = System(base, english, ("mg",))
        elif name == "translate":
            systems[name] = System(base, suite.translate)
        elif name in (external or {}):
            systems[name] = System(external[name])
        else:
            skipped.setdefault(name, "not loaded: the caller gave no draw function for it (systems.load_external)")
    metrics = score(systems, suite, cfg, out, str(pipe.device), progress)
    notes = list(notes or []) + [f"{system} skipped: {why}" for system, why in skipped.items()]
    return EvalResult(metrics=metrics, prompts=dict(suite.sets), images=out, primary=suite.primary,
                      guard=suite.guard, notes=notes, skipped=skipped,
                      order=[*ALWAYS, *(others or {}), *cfg.systems])


def score(systems: dict[str, System], suite: Suite, cfg: EvalConfig, out: Path, device: str,
          progress: Progress = quiet) -> dict[str, dict[str, float]]:
    """Every system's images of every set it is scored on (same seed per prompt and image index, whichever
    system draws), saved under `out`, and the mean of each of the set's metrics. Progress goes to `progress`
    only (the caller turns the pipelines' own bars off): one line per (set, system) scored, with the fraction done."""
    metrics: dict[str, dict[str, float]] = {s: {} for s in systems}
    units = [(set_name, name) for set_name in suite.sets for name, system in systems.items()
             if system.sets is None or set_name in system.sets]  # one (set, system) scored per progress step
    for set_name, prompts in suite.sets.items():
        items = [(p, k) for p in prompts for k in range(cfg.images_per_prompt)]
        seeds = [cfg.seed + i for i in range(len(items))]
        for name, system in systems.items():
            if (set_name, name) not in units:
                continue
            asked = dict(zip((p.id for p in prompts), system.ask(prompts)))
            texts = [asked[p.id] for p, _ in items]
            images = []
            for start in range(0, len(items), cfg.batch_size):
                images += _draw(system.draw, texts[start : start + cfg.batch_size],
                                seeds[start : start + cfg.batch_size], cfg, device)
            for (p, k), image in zip(items, images):
                path = image_path(out, set_name, name, p, k)
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
            for scorer in suite.scorers[set_name]:
                side = [getattr(p, scorer.text) for p, _ in items]
                scores = []
                for start in range(0, len(items), cfg.batch_size):
                    scores += scorer(images[start : start + cfg.batch_size], side[start : start + cfg.batch_size])
                metrics[name][f"{set_name}_{scorer.name}"] = sum(scores) / len(scores)
            progress(f"  {set_name} {name}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in metrics[name].items() if k.startswith(set_name)),
                fraction=(units.index((set_name, name)) + 1) / len(units))
    return metrics
