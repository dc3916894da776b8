"""The per-language job as it runs today on one machine.

Stages that exist run here in order; the Prefect flow (flows/) takes this over once data, training,
evaluation and registration exist (issues 4-8), and `pea train-language` will then run that flow.
"""

from collections.abc import Callable

from pea.languages import Language
from pea.profiles import Profile, check_mlflow

PENDING_STAGES = ["harvest", "translate", "bucket", "cache", "train", "evaluate", "register"]


def run_language(language: Language, profile: Profile, echo: Callable[[str], None] = print) -> dict:
    from pea.models.encoders import load_text_encoder
    from pea.models.loading import load_pipeline
    from pea.presets import get_preset

    preset = get_preset(profile.preset)
    check_mlflow(profile.mlflow_tracking_uri)
    echo(f"pea {language.code} ({language.name}) on profile {profile.name}: preset {preset.name}")
    pipe = load_pipeline(preset, profile.model_cache)
    student = load_text_encoder(preset.student_for(language), profile.model_cache)
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    echo(f"  base model ready: {preset.model_id or profile.model_cache / preset.build} (UNet {unet_params:,} parameters)")
    echo(f"  student encoder ready: {student.spec.id} ({student.hidden_size}-d, {student.spec.max_tokens} tokens)")
    echo(f"  stages not built yet: {', '.join(PENDING_STAGES)}")
    return {"language": language.code, "preset": preset.name, "unet_params": unet_params}
