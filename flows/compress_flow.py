"""The `pea-compress` flow: a block-removed student UNet distilled from the preset's UNet (BK-SDM: SD loss, output
and feature KD) on a language's data, evaluated against that teacher on the English MG prompts and registered as
`pea-unet-<recipe>` behind the champion gate. Deployment `compress` in prefect.yaml.

    prefect deployment run pea-compress/compress --param recipe=sdxl-small --param lang=ko
    prefect deployment run pea-compress/compress --param recipe=bk-sdm-small --param lang=zh \\
        --param 'config={"preset": "sd15", "train": {"steps": 50000, "lr": 5e-5}}'

The stages are the language flow's (flows/pea_flow.py), with the same caching: a language's data harvested and
cached for its adapter is not harvested again for a student. `config.train` sets the job (steps, lr, the BK-SDM
loss weights under `compress`); its method and recipe are this flow's. Once registered, the student loads with
`UNet2DConditionModel.from_pretrained` from `models:/pea-unet-<recipe>@champion`, and an adapter can be distilled
against it (`config.train.unet_from` = this run's name, in the language flow).
"""

from enum import StrEnum

from prefect import flow
from pydantic import ValidationError

from flows.pea_flow import Lang, PipelineResult, _profile, data_stages, run_name_for, train_and_register
from pea.compress.recipes import registry as recipes
from pea.errors import PeaError
from pea.languages import get_language
from pea.presets import get_preset
from pea.profiles import check_mlflow
from pea.run_config import RunConfig
from pea.train.config import COMPRESS, TrainConfig
from pea.train.run import recipe_fits

Recipe = StrEnum("Recipe", {name: name for name in recipes()})


def compression_config(train: TrainConfig, recipe: str) -> TrainConfig:
    """`train` as the compression job of `recipe` (validated again: a kd or unet_from there has no meaning)."""
    try:
        return TrainConfig.model_validate(train.model_dump() | {"method": COMPRESS, "recipe": recipe})
    except ValidationError as e:
        raise PeaError(f"config.train does not fit a compression job: {e.errors()[0]['msg']}",
                       "leave kd and unet_from out of a compress run's config") from e


@flow(name="pea-compress")
def compress(recipe: Recipe, lang: Lang, config: RunConfig = RunConfig(), profile: str = "local") -> PipelineResult:
    """Harvest, translate, bucket and cache `lang`'s data, distil `recipe`'s student of the preset's UNet on it,
    evaluate it against the teacher and register it as pea-unet-<recipe>.

    `profile` is a built-in profile or a YAML path; PEA_* variables of the worker override its fields."""
    prof = _profile(profile)
    language, preset = get_language(str(lang)), get_preset(config.preset)
    train = compression_config(config.train, str(recipe))
    recipe_fits(train, preset)  # before any data stage runs
    check_mlflow(prof.mlflow_tracking_uri)
    features = data_stages(prof, language, preset, config)
    train = train.model_copy(update={"run_name": run_name_for(language.code, preset.name, train)})
    return train_and_register(prof, language, preset, config, train, features)


if __name__ == "__main__":
    compress(recipe=Recipe["sdxl-midless"], lang=Lang.ko, config=RunConfig(preset="toy"))
