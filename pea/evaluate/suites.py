"""What an evaluation measures on a given base model: the prompt sets, the scorers per set, the translate
baseline and the two metrics the champion gate reads.

Real and tiny presets share one suite (the MG/MC files, the paper's metrics; tiny presets name tiny metric
models). The toy preset's teacher draws only shapes, so its suite is the toy world's own prompts, scored by
its judge, with the world's lossy dictionary as the translate baseline: MG on the held-out combinations (the
headline: no adapter trained on them), MG_seen on seen ones, MC on held-out culture scenes.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pea.evaluate.metrics import Scorer, load_scorers
from pea.evaluate.prompts import EvalPrompt, english, mc_prompts, mg_prompts
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


def build_english_suite(preset: Preset, language: Language, model_cache: Path) -> Suite:
    """What a compressed student UNet is measured on against its teacher (pea.compress.evaluate): the MG sets,
    asked in English, scored by the English metrics (no culture set: the teacher knows no native prompts). The
    gate reads CLIPScore_en, the metric BK-SDM reports beside FID, and guards ImageReward; in the toy world the
    judge on held-out scenes, guarded by the seen ones."""
    if preset.eval_models.toy_judge:
        sets, scenes = toy_prompts(language.code)
        general = _toy_general(scenes, model_cache)
        return Suite(sets={k: sets[k] for k in ("mg", "mg_seen")}, scorers={"mg": general, "mg_seen": general},
                     translate=english, primary="mg_judge", guard="mg_seen_judge")
    scorers = load_scorers(preset.eval_models, language.clipscore, model_cache, native=False)
    return Suite(sets={"mg": mg_prompts(language.code)}, scorers={"mg": scorers}, translate=english,
                 primary="mg_clipscore_en", guard="mg_image_reward")


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
    """The toy world's CLIPScore: the judge's mean probability of the asked values on `heads` (the prompt's
    shape, colour and background; on culture prompts the word's shape and colour), or with `accuracy` the
    share of images whose top class on the one head is the asked value."""

    judge: object
    scenes: dict  # native prompt -> Scene
    name: str = "judge"
    heads: tuple[str, ...] = ("shape", "color", "background")
    accuracy: bool = False
    text: str = "native"

    def __call__(self, images, texts):
        from pea.toy.judge import to_tensor
        from pea.toy.world import SIZE

        pixels = to_tensor([im.convert("RGB").resize((SIZE, SIZE)) for im in images])
        scenes = [self.scenes[t] for t in texts]
        if self.accuracy:
            return self.judge.head_hits(pixels, scenes)[self.heads[0]].tolist()
        return self.judge.score(pixels, scenes, self.heads).tolist()


TOY_SEEN_SHARE = 3  # MG_seen scores every third seen scene: as many prompts as the held-out set
TOY_IMAGES = {"mg": 36, "mc": 16}  # images per held-out set (each scene repeated): enough for the judge's mean


def toy_prompts(lang: str) -> tuple[dict[str, list[EvalPrompt]], dict]:
    """MG: the held-out general scenes (the headline), MG_seen: seen ones for comparison, MC: the held-out
    culture scenes; each prompt in `lang` (multilingual: the languages in turn). Returns the sets and the
    scene of every native prompt."""
    from pea.toy.world import (LANGS, MULTILINGUAL, caption, culture_lang, culture_scenes, dictionary_english,
                               general_scenes, prompt_langs)

    def prompts(name: str, scenes: list, images: int | None = None) -> list[EvalPrompt]:
        scenes = scenes * -(-(images or len(scenes)) // len(scenes))
        return [EvalPrompt(f"{name}-{i:03d}", caption(s, code), dictionary_english(s), code)
                for i, (s, code) in enumerate(zip(scenes, prompt_langs(lang, scenes)))]

    sets = {"mg": prompts("heldout", general_scenes(heldout=True), TOY_IMAGES["mg"]),
            "mg_seen": prompts("seen", general_scenes(heldout=False)[::TOY_SEEN_SHARE]),
            "mc": prompts("culture", culture_scenes(lang, heldout=True), TOY_IMAGES["mc"])}
    langs = LANGS if lang == MULTILINGUAL else [lang]
    scenes = {caption(s, code): s for s in general_scenes() + culture_scenes(lang) for code in langs
              if not s.culture_word or culture_lang(s) == code}
    return sets, scenes


def _toy_general(scenes: dict, model_cache: Path) -> list[JudgeScorer]:
    """The judge on general prompts: its mean probability of the asked values, and each head's accuracy."""
    from pea.toy.build import ensure_toy, load_judge

    judge = load_judge(ensure_toy(model_cache))
    return [JudgeScorer(judge, scenes)] + [JudgeScorer(judge, scenes, head, (head,), accuracy=True)
                                           for head in ("shape", "color", "background")]


def _toy_suite(language: Language, model_cache: Path) -> Suite:
    sets, scenes = toy_prompts(language.code)
    general = _toy_general(scenes, model_cache)
    word = JudgeScorer(general[0].judge, scenes, "judge_word", ("shape", "color"))
    return Suite(sets=sets, scorers={"mg": general, "mg_seen": general, "mc": [word]},
                 translate=english,  # the world's dictionary (lossy on culture)
                 primary="mc_judge_word", guard="mg_judge")
