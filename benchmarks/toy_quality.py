"""Adapter quality in the toy world, trained and scored by the pipeline's own stages on a CPU.

    uv run python benchmarks/toy_quality.py --all-languages
    uv run python benchmarks/toy_quality.py --lang ko --ablation     # paper Table 2 rows, as a table
    uv run python benchmarks/toy_quality.py --lang ko --baselines    # PEA against Wk/Wv, LoRA, multilingual

Per language: the toy data (seen scenes only) through harvest, translate, bucket and cache, the adapter
through `pea.train.run.train_adapter` (Ray Train, the `toy` preset's defaults: what `pea train` runs), then
`evaluate_stage` (the judge on held-out and seen prompts, the teacher and the translate baseline beside the
candidate), and the same evaluation of an untrained adapter. The last line is one JSON object:
{"chance": c, "languages": {"ko": {"teacher_heldout", "heldout", "seen", "culture", "culture_translate",
"untrained", "heads", "minutes"}, ...}} (with --ablation: {"chance", "lang", "methods": {method: ...}}).
With --baselines, on --lang: PEA, the fine-tuning baselines `wkwv` and `lora` (pea.baselines: the SD loss on
the language's data, part of the UNet trained) and the multilingual adapter (trained on English only) asked
in the same language, so its held-out and culture scores compare with the language's own PEA row; the last
line is {"methods": {"pea": {"heldout", "culture", "seen", "teacher_heldout", "culture_translate", "heads",
"minutes", "adapter", "asked_in"}, "wkwv": ..., "lora": ..., "multilingual": ...}}.
The stages and the measuring are pea.toy.quality.measure, which tests/test_toy_quality.py runs too.
"""

import argparse
import json
import tempfile
from pathlib import Path

from pea.distill import ABLATIONS
from pea.profiles import load_profile
from pea.run_config import build_run_config
from pea.toy.judge import CHANCE
from pea.toy.quality import measure
from pea.toy.world import LANGS, MULTILINGUAL, TOY_LANGS

# --baselines: row -> (the adapter's language, None for --lang; its training method)
BASELINES = {"pea": (None, "pea"), "wkwv": (None, "wkwv"), "lora": (None, "lora"),
             "multilingual": (MULTILINGUAL, "pea")}


def with_method(config, method: str):
    return config.model_copy(update={"train": config.train.model_copy(update={"method": method})})


def rounded(value):
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


def print_languages(rows: dict) -> None:
    print("| language | teacher (held-out) | held-out (x teacher) | seen | culture | culture, translate | untrained | minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for lang, r in rows.items():
        print(f"| {lang} | {r['teacher_heldout']:.3f} | {r['heldout']:.3f} ({r['heldout'] / r['teacher_heldout']:.2f}) "
              f"| {r['seen']:.3f} | {r['culture']:.3f} | {r['culture_translate']:.3f} | {r['untrained']:.3f} "
              f"| {r['minutes']:.1f} |")


def print_ablation(rows: dict) -> None:
    print("| method | held-out (x teacher) | seen | culture | minutes |\n| --- | --- | --- | --- | --- |")
    for method, r in rows.items():
        print(f"| {method} | {r['heldout']:.3f} ({r['heldout'] / r['teacher_heldout']:.2f}) | {r['seen']:.3f} "
              f"| {r['culture']:.3f} | {r['minutes']:.1f} |")


def baselines(profile, lang: str, config) -> dict:
    """Every row of BASELINES trained and scored, each asked in `lang`."""
    rows = {}
    for row, (adapter_lang, method) in BASELINES.items():
        adapter_lang = adapter_lang or lang
        scores = measure(profile, adapter_lang, with_method(config, method), untrained=False,
                         asked_in=lang if adapter_lang != lang else None)
        rows[row] = scores.model_dump(exclude={"untrained"}) | {"adapter": adapter_lang, "asked_in": lang}
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang", default="ko", choices=TOY_LANGS)
    parser.add_argument("--all-languages", action="store_true", help=f"every toy language: {', '.join(TOY_LANGS)}")
    parser.add_argument("--method", default="pea", choices=list(ABLATIONS))
    parser.add_argument("--ablation", action="store_true", help="train every row of pea.distill.ABLATIONS on --lang")
    parser.add_argument("--baselines", action="store_true",
                        help=f"train and score {', '.join(BASELINES)} on --lang (one of {', '.join(LANGS)})")
    parser.add_argument("--config", type=Path, default=None, help="a run config YAML (default: the built-in one)")
    parser.add_argument("--model-cache", default="pea-data/models", help="where the toy world is built or found")
    args = parser.parse_args()
    if args.baselines and args.lang not in LANGS:
        parser.error(f"--baselines asks every adapter in --lang: one of {', '.join(LANGS)}")
    config = build_run_config(args.config, {"preset": "toy"})
    with tempfile.TemporaryDirectory() as data_dir:
        profile = load_profile("local", env={}, cwd=Path(data_dir))
        profile.model_cache.parent.mkdir(parents=True)
        kept = Path(args.model_cache).resolve()
        kept.mkdir(parents=True, exist_ok=True)  # a first run from any folder: no dangling link
        profile.model_cache.symlink_to(kept)  # the world is built once, kept here
        if args.baselines:
            rows = baselines(profile, args.lang, config)
            print_ablation(rows)
            out = {"methods": rows}
        elif args.ablation:
            rows = {m: measure(profile, args.lang, with_method(config, m), untrained=False).model_dump()
                    for m in ABLATIONS}
            print_ablation(rows)
            out = {"chance": CHANCE, "lang": args.lang, "methods": rows}
        else:
            langs = TOY_LANGS if args.all_languages else [args.lang]
            rows = {lang: measure(profile, lang, with_method(config, args.method)).model_dump() for lang in langs}
            print_languages(rows)
            out = {"chance": CHANCE, "method": args.method, "languages": rows}
    print(json.dumps(rounded(out)))


if __name__ == "__main__":
    main()
