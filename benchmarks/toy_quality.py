"""Adapter quality in the toy world, end to end on a CPU.

    uv run python benchmarks/toy_quality.py --lang ko
    uv run python benchmarks/toy_quality.py --lang ko --ablation     # paper Table 2 rows, as a table

Builds (or finds, by digest) the toy world, trains the adapter alone by KD (hybrid: KD on parallel samples,
SD loss on culture samples) and scores generated images with the world's judge. The last line is one JSON
object: chance, teacher_en, student_untrained, student_pea, translate_baseline, culture_pea,
culture_translate, culture_untrained, train_minutes.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from pea.distill import ABLATIONS
from pea.toy.build import ToyConfig, ensure_toy
from pea.toy.judge import CHANCE
from pea.toy.quality import (ToyModels, kd_data, prompts_for, score, student_conditioner, teacher_conditioner,
                             train_adapter, translated)
from pea.toy.world import culture_scenes, general_scenes


def trained_scores(models, student, lang: str, method: str, args) -> dict:
    adapter = models.adapter(lang)
    data = kd_data(models, student, lang, args.samples, args.culture_share, seed=1)
    minutes = train_adapter(models, student, adapter, data, ABLATIONS[method], args.kd_steps)
    conditioner = student_conditioner(student, adapter)
    general, culture = general_scenes(), culture_scenes(lang) * 6
    return {"student_pea": score(models, conditioner, prompts_for(general, lang), general),
            "culture_pea": score(models, conditioner, prompts_for(culture, lang), culture),
            "train_minutes": minutes}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang", default="ko")
    parser.add_argument("--method", default="pea", choices=list(ABLATIONS))
    parser.add_argument("--ablation", action="store_true", help="train every row of pea.distill.ABLATIONS")
    parser.add_argument("--kd-steps", type=int, default=600)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--culture-share", type=float, default=0.15)
    parser.add_argument("--model-cache", default="pea-data/models")
    parser.add_argument("--toy-dir", default=None, help="an already built toy world (default: build or find by digest)")
    args = parser.parse_args()
    start = time.perf_counter()
    folder = Path(args.toy_dir) if args.toy_dir else ensure_toy(Path(args.model_cache), ToyConfig())
    build_minutes = (time.perf_counter() - start) / 60
    models = ToyModels.load(folder)
    student = models.student(args.lang)
    general, culture = general_scenes(), culture_scenes(args.lang) * 6
    teacher = teacher_conditioner(models)
    untrained = student_conditioner(student, models.adapter(args.lang))
    out = {"lang": args.lang, "chance": round(CHANCE, 3),
           "teacher_en": score(models, teacher, prompts_for(general, "en"), general),
           "translate_baseline": score(models, teacher, translated(general, args.lang), general),
           "culture_translate": score(models, teacher, translated(culture, args.lang), culture),
           "student_untrained": score(models, untrained, prompts_for(general, args.lang), general),
           "culture_untrained": score(models, untrained, prompts_for(culture, args.lang), culture),
           "build_minutes": build_minutes}
    if args.ablation:
        rows = {method: trained_scores(models, student, args.lang, method, args) for method in ABLATIONS}
        print("| method | general (x teacher) | culture | minutes |\n| --- | --- | --- | --- |")
        for method, r in rows.items():
            print(f"| {method} | {r['student_pea']:.3f} ({r['student_pea'] / out['teacher_en']:.2f}) "
                  f"| {r['culture_pea']:.3f} | {r['train_minutes']:.1f} |")
        out["ablation"] = {m: {k: round(v, 3) for k, v in r.items()} for m, r in rows.items()}
    else:
        out |= {"method": args.method, **trained_scores(models, student, args.lang, args.method, args)}
        out["student_vs_teacher"] = out["student_pea"] / out["teacher_en"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
