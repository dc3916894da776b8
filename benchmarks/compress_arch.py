"""Parameters and MACs per denoising step of every compression recipe's student next to its real teacher
(SD1.5 at 512 px, SDXL at 1024 px), on the meta device: no weights, no download, a few seconds on a CPU.

    uv run python benchmarks/compress_arch.py

One JSON line per recipe:
  teacher_params, student_params, param_ratio (student / teacher)
  teacher_gmacs, student_gmacs, macs_ratio: GMACs of one batch-1 forward, every matmul and convolution counted
  teacher_gmacs_thop, student_gmacs_thop, macs_ratio_thop: the same without the attention's QK^T and AV
    products, as thop (the BK-SDM paper's counter) counts them
  paper: what the source reports (pea/compress/reported.py): params_b, gmacs_thop and their ratios to the
    teacher's reported numbers, where it reports them
The last line is one JSON object: per recipe, param_ratio and macs_ratio_thop beside the paper's.
"""

import json

from pea.compress.measure import macs_per_step, meta_unet, param_count, real_unet_config
from pea.compress.recipes import registry
from pea.compress.reported import REPORTED
from pea.compress.student import student_config

LATENT_SIDE = {"sd15": 64, "sdxl": 128}  # 512 px and 1024 px over the VAE's factor 8


def sizes(config: dict, family: str) -> dict:
    unet = meta_unet(config)
    macs = macs_per_step(unet, LATENT_SIDE[family])
    return {"params": param_count(unet), "gmacs": macs["total"] / 1e9,
            "gmacs_thop": macs["without_attention_scores"] / 1e9}


def paper(name: str, family: str) -> dict:
    reported, teacher = REPORTED.get(name, {}), REPORTED[family]
    out = {}
    if "params_b" in reported:
        out.update(params_b=reported["params_b"], param_ratio=reported["params_b"] / teacher["params_b"])
    if "macs_g" in reported:
        out.update(gmacs_thop=reported["macs_g"], macs_ratio_thop=reported["macs_g"] / teacher["macs_g"])
    return out


def recipe_line(recipe, teacher: dict) -> dict:
    student = sizes(student_config(real_unet_config(recipe.family), recipe), recipe.family)
    return {
        "recipe": recipe.name, "family": recipe.family, "latent_side": LATENT_SIDE[recipe.family],
        "teacher_params": teacher["params"], "student_params": student["params"],
        "param_ratio": round(student["params"] / teacher["params"], 4),
        "teacher_gmacs": round(teacher["gmacs"], 1), "student_gmacs": round(student["gmacs"], 1),
        "macs_ratio": round(student["gmacs"] / teacher["gmacs"], 4),
        "teacher_gmacs_thop": round(teacher["gmacs_thop"], 1), "student_gmacs_thop": round(student["gmacs_thop"], 1),
        "macs_ratio_thop": round(student["gmacs_thop"] / teacher["gmacs_thop"], 4),
        "paper": {k: round(v, 4) for k, v in paper(recipe.name, recipe.family).items()},
    }


def main():
    teachers = {family: sizes(real_unet_config(family), family) for family in LATENT_SIDE}
    lines = [recipe_line(recipe, teachers[recipe.family]) for recipe in registry().values()]
    for line in lines:
        print(json.dumps(line))
    print(json.dumps({line["recipe"]: {"param_ratio": line["param_ratio"], "macs_ratio_thop": line["macs_ratio_thop"],
                                       "paper_param_ratio": line["paper"].get("param_ratio"),
                                       "paper_macs_ratio_thop": line["paper"].get("macs_ratio_thop")}
                      for line in lines}))


if __name__ == "__main__":
    main()
