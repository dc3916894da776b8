"""The MLflow model registry per language: `pea-<lang>`, aliases `challenger` (newest candidate) and
`champion` (the one to serve), and the champion gate's decision written onto each version. The fine-tuning
baselines (pea.baselines: `wkwv`, `lora`) change the UNet, so they are no plug-ins: they register apart, as
`pea-<lang>-<method>`, tagged so (`method_tags`).

A version is the training run's adapter logged as a pyfunc model (pea/serving.py) on that run; registering
the same run again finds its version instead of making a second one, so a retried task is harmless.

A compressed student UNet (pea.compress) registers as `pea-unet-<recipe>`, of no language, with the same
aliases and gate: its version's source is the diffusers UNet folder the compression run logged, so what
`models:/pea-unet-<recipe>@champion` downloads is what `UNet2DConditionModel.from_pretrained` loads.
"""

import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pea.adapter import CONFIG
from pea.errors import PeaError
from pea.names import UNET_METHODS, compress_model_name, model_name
from pea.tracking import OUTPUT_ARTIFACTS, client

CHAMPION, CHALLENGER = "champion", "challenger"
PYFUNC_NAME = "pea_adapter"
# what MLflow answers for a model, version or alias that is not there (or a version that is no number)
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model, register_model) reads a global URI: set it for this block only."""
    import mlflow

    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def method_tags(method: str) -> dict[str, str]:
    """What a version is: its training method, and whether it changes the UNet (then it is no plug-in: it needs
    its own UNet weights, saved next to the bridge, and cannot join other SD plug-ins unchanged)."""
    changes_unet = method in UNET_METHODS
    return {"pea.method": method, "pea.changes_unet": str(changes_unet).lower(),
            "pea.plug_in": str(not changes_unet).lower()}


def version_by_alias(tracking_uri: str, lang: str, alias: str, method: str = "pea", encoder_variant: str | None = None,
                     unet: str | None = None):
    """The adapter version behind `alias`, or None when the model or the alias does not exist."""
    return aliased(tracking_uri, model_name(lang, method, encoder_variant, unet), alias)


def aliased(tracking_uri: str, name: str, alias: str):
    """Registered model `name`'s version behind `alias`, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def download_adapter(tracking_uri: str, name: str, version: str, dst: Path) -> Path:
    """The adapter folder of a registered version, downloaded under `dst`."""
    import mlflow

    try:
        with _tracking(tracking_uri):
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst))
    except Exception as e:  # noqa: BLE001 -- MLflow raises many kinds; all mean the artifacts are not there
        raise PeaError(f"the artifacts of {name} version {version} cannot be downloaded ({e})",
                       "re-register the run, or move the alias to a version whose artifacts exist") from e
    found = sorted(Path(local).rglob(CONFIG))
    if not found:
        raise PeaError(f"{name} version {version} holds no adapter ({CONFIG} missing)",
                       "re-register the run, or move the alias to a version whose artifacts exist")
    return found[0].parent


def resolve_adapter(uri: str, tracking_uri: str, cache: Path) -> Path:
    """A folder, or `models:/pea-<lang>@alias` / `models:/pea-<lang>/<version>`, as a local adapter folder."""
    if not uri.startswith("models:/"):
        return Path(uri)
    from mlflow.exceptions import MlflowException

    ref = uri.removeprefix("models:/")
    mlflow_client = client(tracking_uri)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            version = str(mlflow_client.get_model_version_by_alias(name, alias).version)
        else:
            name, _, version = ref.partition("/")
            mlflow_client.get_model_version(name, version)
    except MlflowException as e:
        if e.error_code not in _NOT_FOUND:  # the server failed or went away: the model may well exist
            cause = str(e).split("\n", 1)[0]
            raise PeaError(f"the registry at {tracking_uri} could not look up {uri} ({cause})",
                           "check the server (`pea profile --check`), then run again") from e
        raise PeaError(f"{uri} does not exist in the registry at {tracking_uri}",
                       "see `pea models --lang <lang>` for the registered versions") from e
    return download_adapter(tracking_uri, name, version, cache / name / version)


def _environment(pip_requirements: list[str]) -> dict:
    """The model's whole environment, spelled out: given only pip requirements, MLflow still looks up the
    installed pip to pin it in conda.yaml, and warns that it failed in a uv environment (which has no pip)."""
    return {"name": "pea", "channels": ["conda-forge"],
            "dependencies": [f"python={platform.python_version()}", "pip", {"pip": pip_requirements}]}


@dataclass
class Registered:
    version: str
    created: bool  # False: this run was registered before (a retry)


def register(tracking_uri: str, lang: str, run_id: str, adapter_dir: Path, tags: dict[str, str],
             model_config: dict, method: str = "pea", encoder_variant: str | None = None,
             unet: str | None = None) -> Registered:
    """Log the adapter folder (a baseline's UNet part with it) as a pyfunc model on the training run and register
    it as a version of `model_name(lang, method, encoder_variant, unet)`; idempotent per run. The new version gets
    `challenger`."""
    import mlflow

    from pea.resources import resource_path
    from pea.serving import requirements

    mlflow_client, name = client(tracking_uri), model_name(lang, method, encoder_variant, unet)
    tags = tags | method_tags(method)
    existing = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return Registered(str(existing[0].version), False)
    with _tracking(tracking_uri), tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "adapter"
        shutil.copytree(adapter_dir, staged)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name=PYFUNC_NAME, python_model=str(resource_path("pyfunc_model.py")),
                                           artifacts={"adapter": str(staged)}, conda_env=_environment(requirements()),
                                           metadata=tags, model_config=model_config)
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    return Registered(str(version.version), True)


def register_student(tracking_uri: str, recipe: str, run_id: str, tags: dict[str, str]) -> Registered:
    """The student UNet compression run `run_id` logged (OUTPUT_ARTIFACTS/unet, a diffusers folder) as a version of
    `pea-unet-<recipe>`; idempotent per run. The new version gets `challenger`."""
    mlflow_client, name = client(tracking_uri), compress_model_name(recipe)
    existing = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return Registered(str(existing[0].version), False)
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri}/{OUTPUT_ARTIFACTS}/unet"
    if not any(f.path.endswith(".safetensors") for f in mlflow_client.list_artifacts(run_id, f"{OUTPUT_ARTIFACTS}/unet")):
        raise PeaError(f"compression run {run_id} logged no student UNet under {source}",
                       "let the compression job finish (the same run name continues it)")
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = mlflow_client.create_model_version(name, source, run_id=run_id, tags=tags)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    return Registered(str(version.version), True)


def download_student(tracking_uri: str, name: str, version: str, dst: Path) -> Path:
    """The diffusers UNet folder of a registered student version, downloaded under `dst`."""
    import mlflow

    try:
        with _tracking(tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))
    except Exception as e:  # noqa: BLE001 -- MLflow raises many kinds; all mean the artifacts are not there
        raise PeaError(f"the artifacts of {name} version {version} cannot be downloaded ({e})",
                       "re-register the run, or move the alias to a version whose artifacts exist") from e
    if not (local / "config.json").is_file():
        raise PeaError(f"{name} version {version} holds no UNet (config.json missing)",
                       "re-register the run, or move the alias to a version whose artifacts exist")
    return local


def apply_decision(tracking_uri: str, name: str, version: str, promote: bool, tags: dict[str, str]) -> None:
    """The gate's decision as tags of version `version` of registered model `name`; `champion` moves to it when
    it is promoted."""
    mlflow_client = client(tracking_uri)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, value)
    if promote:
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)


def list_versions(tracking_uri: str, lang: str, method: str = "pea") -> list[dict]:
    """Every version of `model_name(lang, method)`, newest first, with aliases, gate decision and primary/guard
    metrics."""
    mlflow_client, name = client(tracking_uri), model_name(lang, method)
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    if not versions:
        return []
    # search results carry no aliases; the registered model has them all
    aliases = mlflow_client.get_registered_model(name).aliases or {}
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        mine = [a for a, version in aliases.items() if str(version) == str(v.version)]
        rows.append({"version": str(v.version), "aliases": mine, "run_id": v.run_id,
                     "primary": tags.get("pea.primary", ""), "primary_value": tags.get("pea.primary_value", ""),
                     "guard": tags.get("pea.guard", ""), "guard_value": tags.get("pea.guard_value", ""),
                     "decision": tags.get("pea.gate.decision", ""), "reason": tags.get("pea.gate.reason", ""),
                     "created": v.creation_timestamp})
    return rows
