"""Adapter quality in the toy world, end to end on a CPU.

    uv run python benchmarks/toy_quality.py --lang ko

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lang", default="ko")
    parser.add_argument("--method", default="pea", choices=list(ABLATIONS))
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
    adapter = models.adapter(args.lang)
    out = {"lang": args.lang, "method": args.method, "chance": round(CHANCE, 3),
           "teacher_en": score(models, teacher, prompts_for(general, "en"), general),
           "translate_baseline": score(models, teacher, translated(general, args.lang), general),
           "culture_translate": score(models, teacher, translated(culture, args.lang), culture),
           "student_untrained": score(models, student_conditioner(student, adapter), prompts_for(general, args.lang), general),
           "culture_untrained": score(models, student_conditioner(student, adapter), prompts_for(culture, args.lang), culture)}
    data = kd_data(models, student, args.lang, args.samples, args.culture_share, seed=1)
    minutes = train_adapter(models, student, adapter, data, ABLATIONS[args.method], args.kd_steps)
    conditioner = student_conditioner(student, adapter)
    out |= {"student_pea": score(models, conditioner, prompts_for(general, args.lang), general),
            "culture_pea": score(models, conditioner, prompts_for(culture, args.lang), culture),
            "train_minutes": minutes, "build_minutes": build_minutes}
    out["student_vs_teacher"] = out["student_pea"] / out["teacher_en"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
