"""Profiles: where a run's compute, storage and tracking live (local machine vs. cluster).

A profile is a YAML file (a built-in name or a path) plus environment overrides. The environment is read
by the entry point only and handed in as a mapping: nothing below the CLI or a flow reads it itself.
Override keys are `PEA_<FIELD>`, nested with `__`: PEA_STORAGE_ROOT=s3://b/p, PEA_RAY__NUM_WORKERS=4.
"""

import base64
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from pea.errors import PeaError, redact
from pea.resources import resource_path

ENV_PREFIX = "PEA_"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RayProfile(_Strict):
    address: str | None = None  # None: start a local Ray; "auto" or ray://host:10001 for a cluster
    # The head's Jobs API (its dashboard, http://head:8265). Set: training runs there as a Ray job that outlives
    # the process that submitted it (pea.train.jobs). None or "": training runs in this process, on `address`.
    jobs_address: str | None = None
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    data_workers: int = Field(1, ge=1)  # Ray Data's CPU actors for decoding and cropping (the cache: one per GPU)

    @field_validator("jobs_address", mode="before")
    @classmethod
    def _unset(cls, value):
        """PEA_RAY__JOBS_ADDRESS="" turns the Jobs API off (an environment variable cannot say None)."""
        return value or None


class S3Profile(_Strict):
    endpoint_url: str | None = None  # MinIO, Ceph or a test server; None for AWS itself


class Profile(_Strict):
    name: str
    data_dir: Path  # local working folder: model cache, SQLite, scratch
    storage_root: str  # local path or s3://bucket/prefix
    mlflow_tracking_uri: str
    mlflow_artifact_root: str | None = None  # where new experiments keep artifacts; None: the server's default
    ray: RayProfile = RayProfile()
    s3: S3Profile = S3Profile()

    @field_serializer("storage_root", "mlflow_tracking_uri", "mlflow_artifact_root", when_used="json-unless-none")
    def _redacted(self, uri: str) -> str:
        """A profile dumped as JSON is shown (`pea profile`; Prefect keeps a sub-flow's parameters for its UI):
        without passwords. The running code reads the fields themselves, passwords included."""
        return redact(uri)

    @property
    def model_cache(self) -> Path:
        return self.data_dir / "models"

    def storage(self):
        from pea.storage import Storage

        return Storage(self.storage_root, endpoint_url=self.s3.endpoint_url)


def builtin_profiles() -> list[str]:
    return sorted(p.stem for p in resource_path("profiles").glob("*.yaml"))


def _read_profile_file(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        if name_or_path not in builtin_profiles():
            raise PeaError(
                f"unknown profile {name_or_path!r}",
                f"use one of: {', '.join(builtin_profiles())}, or the path of a profile YAML file",
            )
        path = resource_path("profiles", f"{name_or_path}.yaml")
    if not path.is_file():
        raise PeaError(f"profile file {path} does not exist", "give the path of a profile YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PeaError(f"profile file {path} is not valid YAML ({e})", "fix the syntax") from e
    if not isinstance(raw, dict):
        raise PeaError(f"profile file {path} does not hold a mapping of fields", "see pea/resources/profiles/")
    return raw


def _apply_env(raw: dict, env: Mapping[str, str]) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}PROFILE":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PeaError(f"environment variable {key}: profile field {part!r} has no fields inside",
                               f"remove {key}, or set {ENV_PREFIX}{part.upper()} itself")
        node[path[-1]] = value
    return out


def _first_error(e: ValidationError, source: str) -> PeaError:
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    env_name = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
    kinds = {"missing": "is missing", "extra_forbidden": "is not a profile field"}
    what = kinds.get(err["type"], f"is invalid: {err['msg']}")
    fix = f"set {field} in the profile file or {env_name}" if err["type"] != "extra_forbidden" else (
        f"remove or correct it (fields: {', '.join(Profile.model_fields)})"
    )
    return PeaError(f"profile {source}: field {field!r} {what}", fix)


def load_profile(name_or_path: str = "local", env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Profile:
    """Read a profile, apply `env` overrides, make paths absolute against `cwd`."""
    raw = _apply_env(_read_profile_file(name_or_path), env or {})
    try:
        data_dir = (Path(cwd or Path.cwd()) / str(raw.get("data_dir", ""))).resolve()
        for key in ("storage_root", "mlflow_tracking_uri", "mlflow_artifact_root"):
            if isinstance(raw.get(key), str):
                raw[key] = raw[key].replace("{data_dir}", str(data_dir))
        raw["data_dir"] = data_dir
        return Profile(**raw)
    except ValidationError as e:
        raise _first_error(e, name_or_path) from e


def check_mlflow(uri: str, timeout_s: float = 3.0) -> None:
    """Fail early, with the fix, when the tracking server cannot be reached: MLflow's own client retries for
    minutes before it gives up, and then names no cause a user can act on."""
    fix = "start the server (`mlflow server --host 127.0.0.1`), or set mlflow_tracking_uri / PEA_MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:  # it answered, with an error
            status = e.code
        except (urllib.error.URLError, OSError) as e:
            raise PeaError(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)})", fix) from e
        if status != 200:
            raise PeaError(f"MLflow tracking server {uri} answered /health with HTTP {status}",
                           "check that the URI is the MLflow server's, with the right user and password, and the "
                           "server's log")
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PeaError(f"cannot create {folder} for the MLflow SQLite database ({e})", fix) from e
        return
    raise PeaError(f"unsupported MLflow tracking URI {uri!r}", "use sqlite:///path/mlflow.db or http(s)://host:port")


def _health_request(uri: str) -> urllib.request.Request:
    """GET <uri>/health. urllib would take a URI's `user:password@` for part of the host name (and fail to look it
    up); MLflow's client sends it as basic auth, and so does this."""
    parts = urllib.parse.urlsplit(uri.rstrip("/") + "/health")
    request = urllib.request.Request(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
    if parts.username is not None:
        user = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    return request
