"""Names that other people's scripts depend on (MLflow models and experiments, training run names), each
spelled once, and the one rule for every name a user gives that becomes a path segment under the storage root."""

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from pea.errors import PeaError

# one path segment: no '/', no leading '.', never '..', so a name can neither climb out of its folder nor hide
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


def check_name(value: str, what: str) -> str:
    """`value` if it is a safe name: source, run, language and preset names become folders under the storage
    root, and a deployment parameter may come from anyone who can start a flow run."""
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value) or ".." in value:
        raise PeaError(f"{what} {value!r} is not a valid name",
                       "use 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'")
    return value


def name_type(what: str):
    """A str field checked by `check_name` wherever the model is built (flags, YAML, Prefect parameters); the
    pattern is in its JSON schema too, so a Prefect server refuses a bad deployment parameter before a run."""
    return Annotated[str, AfterValidator(lambda value: check_name(value, what)),
                     Field(json_schema_extra={"pattern": NAME_PATTERN})]


# Methods that change the UNet (pea.baselines.UNET_PARTS): no plug-ins, so registered apart from the adapters
UNET_METHODS = ("wkwv", "lora")


def model_name(lang: str, method: str = "pea", encoder_variant: str | None = None, unet: str | None = None) -> str:
    """The registered model of a language's adapters (`pea-<lang>`: PEA and its ablations, plug-ins all), and the
    MLflow experiment of its training runs; a baseline that changes the UNet registers as `pea-<lang>-<method>`.
    An adapter on one of the language's encoder variants (pea.languages) needs that encoder, not the language's
    own, so it registers apart too: `pea-<lang>-<variant>` (`pea-<lang>-<method>-<variant>` for a baseline). One
    distilled against a compressed student (train.unet_from) is measured on that student: `...-on-<recipe>`."""
    parts = ["pea", lang, *([method] if method in UNET_METHODS else []), *([encoder_variant] if encoder_variant else []),
             *(["on", unet] if unet else [])]
    return "-".join(parts)


def run_name(lang: str, preset: str, suffix: str | None = None, method: str = "pea",
             encoder_variant: str | None = None) -> str:
    """A training job's name (the same name resumes the job): per language, preset and registered model, plus a
    suffix such as the flow run's id when every flow run trains its own candidate."""
    return f"{model_name(lang, method, encoder_variant)}-{preset}" + (f"-{suffix}" if suffix else "")


def compress_model_name(recipe: str) -> str:
    """A compressed student UNet's registered model (pea.compress): `pea-unet-<recipe>`, of no language."""
    return f"pea-unet-{recipe}"


def compress_run_name(recipe: str, preset: str, suffix: str | None = None) -> str:
    """A compression job's name: per recipe and teacher preset (the data's language is not part of it)."""
    return f"{compress_model_name(recipe)}-{preset}" + (f"-{suffix}" if suffix else "")
