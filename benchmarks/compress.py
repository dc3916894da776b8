"""Architectural compression in the toy world (issue #18): a student of the toy teacher distilled by
`pea compress`'s job, then timed and judged against the teacher, alone and driven by a language adapter.

    uv run python benchmarks/compress.py [--recipe sdxl-midless] [--lang ko] [--steps N] [--lr 1e-4]

1. The language's toy data through the data stages (pea.toy.quality.prepare, as the flow runs them).
2. Its adapter trained on the teacher (method pea, the toy preset's defaults: what `pea train` runs).
3. The student distilled on the same shards' English side (pea.train.run.train_adapter, method compress:
   what `pea compress` runs; BK-SDM's loss weights; the adapter's step count unless --steps).
4. A second adapter distilled against the student (train.unet_from: the student is its frozen UNet).
5. Both UNets: parameters, and the median CPU time of one forward at the toy latent size (pea.compress.measure).
6. The judge on held-out prompts (pea.toy.quality.judged) with the teacher's UNet, the distilled student's and
   the student as the recipe makes it before distillation (the teacher's kept blocks), each in every system:
   the English prompts ("teacher_en": the UNet alone) and the adapter (the language's prompts through the
   adapter trained in 2, which never saw a student); and the adapter of 4 on the student.

The last line is one JSON object: param_ratio and latency_ratio (student / teacher), judge_ratio (student /
teacher, English held-out), adapter_judge_ratio (adapter on the student / adapter on the teacher), and the
numbers they come from (adapter_on_student_distilled: the adapter of 4).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from pea.compress.measure import cpu_latency, param_count
from pea.compress.recipes import get_recipe, registry
from pea.compress.student import make_student, save_student
from pea.languages import get_language
from pea.presets import get_preset
from pea.profiles import load_profile
from pea.run_config import build_run_config
from pea.toy.quality import judged, prepare
from pea.toy.world import TOY_LANGS
from pea.train.config import TrainSwitches
from pea.train.run import train_adapter

LOG = TrainSwitches(progress="log")


def unets(profile, preset, student_folder: Path):
    """(teacher UNet, student UNet) on the CPU in fp32, and the latent side at the preset's resolution."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pea.models.loading import pipeline_source

    source = pipeline_source(preset, profile.model_cache)
    teacher = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    vae_scale = 2 ** (len(AutoencoderKL.load_config(source, subfolder="vae")["block_out_channels"]) - 1)
    return teacher, UNet2DConditionModel.from_pretrained(student_folder), preset.resolution // vae_scale


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    toy_recipes = [name for name, r in registry().items() if r.family == get_preset("toy").family]
    parser.add_argument("--recipe", default="sdxl-midless", choices=toy_recipes)
    parser.add_argument("--lang", default="ko", choices=TOY_LANGS)
    parser.add_argument("--steps", type=int, default=None, help="compression steps (default: the adapter's)")
    parser.add_argument("--lr", type=float, default=1e-4, help="compression learning rate (BK-SDM: 5e-5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per UNet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profile = load_profile("local", env={}, cwd=Path(tmp))
        config = build_run_config(None, {"preset": "toy"})
        language, preset = get_language(args.lang), get_preset("toy")
        start = time.perf_counter()
        prepare(profile, language, config)
        adapter = train_adapter(profile, language, preset, config.train, LOG)
        compress_cfg = config.train.model_copy(update={"method": "compress", "recipe": args.recipe, "lr": args.lr,
                                                       "steps": args.steps or config.train.steps})
        student = train_adapter(profile, language, preset, compress_cfg, LOG)
        student_folder = Path(student.adapter_uri) / "unet"
        on_student_cfg = config.train.model_copy(update={"unet_from": student.run_name})
        adapter_on_student = train_adapter(profile, language, preset, on_student_cfg, LOG)
        teacher_unet, student_unet, side = unets(profile, preset, student_folder)
        teacher_s = cpu_latency(teacher_unet, side, args.repeats)
        student_s = cpu_latency(student_unet, side, args.repeats)
        undistilled = save_student(make_student(teacher_unet, get_recipe(args.recipe)), Path(tmp) / "undistilled")
        on_teacher, on_student, on_undistilled = (
            judged(profile, language, config, Path(adapter.adapter_uri), language, sets=("mg",), unet=unet)
            for unet in (None, student_folder, undistilled))
        distilled_on_student = judged(profile, language, config, Path(adapter_on_student.adapter_uri), language,
                                      sets=("mg",), unet=student_folder)["candidate"]["mg_judge"]
        minutes = (time.perf_counter() - start) / 60
    teacher_en, student_en = on_teacher["teacher_en"]["mg_judge"], on_student["teacher_en"]["mg_judge"]
    adapter_teacher, adapter_student = on_teacher["candidate"]["mg_judge"], on_student["candidate"]["mg_judge"]
    params = {"teacher": param_count(teacher_unet), "student": param_count(student_unet)}
    result = {
        "recipe": args.recipe, "lang": args.lang, "steps": compress_cfg.steps, "lr": args.lr,
        "param_ratio": params["student"] / params["teacher"], "latency_ratio": student_s / teacher_s,
        "judge_ratio": student_en / teacher_en, "adapter_judge_ratio": adapter_student / adapter_teacher,
        "params": params, "latency_s": {"teacher": teacher_s, "student": student_s},
        "judge_heldout": {"teacher_en": teacher_en, "student_en": student_en, "adapter_on_teacher": adapter_teacher,
                          "adapter_on_student": adapter_student,
                          "undistilled_en": on_undistilled["teacher_en"]["mg_judge"],
                          "adapter_on_undistilled": on_undistilled["candidate"]["mg_judge"],
                          "adapter_on_student_distilled": distilled_on_student},
        "minutes": minutes,
    }
    j = result["judge_heldout"]
    print(f"| recipe | params (ratio) | CPU step (ratio) | English held-out judge (ratio) | {args.lang} adapter (ratio) "
          f"| {args.lang} adapter distilled on the student | before distillation: English, adapter |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.recipe} | {params['student']:,} / {params['teacher']:,} ({result['param_ratio']:.2f}) "
          f"| {student_s * 1000:.1f} / {teacher_s * 1000:.1f} ms ({result['latency_ratio']:.2f}) "
          f"| {student_en:.3f} / {teacher_en:.3f} ({result['judge_ratio']:.2f}) "
          f"| {adapter_student:.3f} / {adapter_teacher:.3f} ({result['adapter_judge_ratio']:.2f}) "
          f"| {distilled_on_student:.3f} | {j['undistilled_en']:.3f}, {j['adapter_on_undistilled']:.3f} |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
