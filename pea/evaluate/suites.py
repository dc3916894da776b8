"""What an evaluation measures on a given base model: the prompt sets, the scorers per set, the translate
baseline and the two metrics the champion gate reads.

Real and tiny presets share one suite (the MG/MC files, the paper's metrics; tiny presets name tiny metric
models). The toy preset's teacher draws only shapes, so its suite is the toy world's own prompts, scored by
its judge, with the world's lossy dictionary as the translate baseline.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pea.evaluate.metrics import Scorer, load_scorers
from pea.evaluate.prompts import EvalPrompt, mc_prompts, mg_prompts
from pea.languages import Language, get_language
from pea.presets import Preset

Translate = Callable[[list[EvalPrompt]], list[str]]


@dataclass
class Suite:
    sets: dict[str, list[EvalPrompt]]  # "mg", "mc"
    scorers: dict[str, list[Scorer]]  # per set
    translate: Translate  # native prompts -> English, for the translate baseline
    primary: str  # the gate's metric: the candidate must beat the champion on it
    guard: str  # the gate's guard: the candidate may not fall more than the tolerance on it

    def limit(self, n: int | None) -> "Suite":
        if n is None:
            return self
        return Suite({k: v[:n] for k, v in self.sets.items()}, self.scorers, self.translate, self.primary, self.guard)


def build_suite(preset: Preset, language: Language, model_cache: Path) -> Suite:
    if preset.eval_models.toy_judge:
        return _toy_suite(language, model_cache)
    scorers = load_scorers(preset.eval_models, language.clipscore, model_cache)
    native = [s for s in scorers if s.name == "clipscore_native"]
    return Suite(sets={"mg": mg_prompts(language.code), "mc": mc_prompts(language.code)},
                 scorers={"mg": scorers, "mc": native}, translate=_machine_translation(preset, language, model_cache),
                 primary="mc_clipscore_native", guard="mg_image_reward")


def _machine_translation(preset: Preset, language: Language, model_cache: Path) -> Translate:
    from pea.data.translate import ENGLISH_CODE, Translator
    from pea.models.loading import model_source

    def translate(prompts: list[EvalPrompt]) -> list[str]:
        """Each prompt from its own language (the multilingual sets mix five), in the original order."""
        model = Translator(model_source(preset.translation_for(language), model_cache))
        out: dict[int, str] = {}
        for lang in dict.fromkeys(p.lang for p in prompts):
            idx = [i for i, p in enumerate(prompts) if p.lang == lang]
            english = model([prompts[i].native for i in idx], get_language(lang).translation.code, ENGLISH_CODE)
            out |= dict(zip(idx, english))
        return [out[i] for i in range(len(prompts))]

    return translate


@dataclass
class JudgeScorer:
    """The toy world's CLIPScore: the judge's mean probability of the prompt's shape, colour, background."""

    judge: object
    scenes: dict  # native prompt -> Scene
    name: str = "judge"
    text: str = "native"

    def __call__(self, images, texts):
        from pea.toy.judge import to_tensor

        return self.judge.score(to_tensor([im.convert("RGB").resize((32, 32)) for im in images]),
                                [self.scenes[t] for t in texts]).tolist()


def toy_prompts(lang: str, culture_repeats: int = 8) -> tuple[dict[str, list[EvalPrompt]], dict]:
    """MG: every general scene once; MC: every culture scene `culture_repeats` times (there are six)."""
    from pea.toy.world import (
        caption,
        culture_scenes,
        dictionary_english,
        general_scenes,
    )

    mg = [EvalPrompt(f"toy-{s.shape}-{s.color}-{s.background}", caption(s, lang), caption(s, "en"), lang)
          for s in general_scenes()]
    mc = [EvalPrompt(f"toy-{s.culture_word}-{s.background}-{k}", caption(s, lang), dictionary_english(s, lang), lang)
          for k in range(culture_repeats) for s in culture_scenes(lang)]
    scenes = {caption(s, lang): s for s in general_scenes() + culture_scenes(lang)}
    return {"mg": mg, "mc": mc}, scenes


def _toy_suite(language: Language, model_cache: Path) -> Suite:
    from pea.toy.build import ensure_toy, load_judge

    sets, scenes = toy_prompts(language.code)
    judge = JudgeScorer(load_judge(ensure_toy(model_cache)), scenes)
    return Suite(sets=sets, scorers={"mg": [judge], "mc": [judge]},
                 translate=lambda prompts: [p.english for p in prompts],  # the world's dictionary (lossy on culture)
                 primary="mc_judge", guard="mg_judge")
