"""An MLflow tracking server that cannot be reached, or answers its health check but fails (issue #16 item 3).

Every command that talks to MLflow checks the server before it does any work and fails in one line that names
the cause, without the URI's password; MLflow's own client would retry for minutes first. The commands a user
waits on give up on a failing server within seconds, not MLflow's minutes."""

import base64
import os
import socket
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from unittest import mock

import mlflow.environment_variables
import pytest

from servers import serving

from flows.cli import _MLFLOW_SHORT_RETRIES, _library_env

SECRET = "s3cret"
QUICK_S = 20  # MLflow's own retries take ~4.5 minutes; the check takes at most its 3 s timeout

COMMANDS = {
    "train": ["train", "--lang", "ko"],
    "evaluate": ["evaluate", "--lang", "ko"],
    "register": ["register", "--lang", "ko"],
    "models": ["models", "--lang", "ko"],
    "generate": ["generate", "빨간 원", "--lang", "ko", "--adapter", "models:/pea-ko/1"],
    "dashboard": ["dashboard"],
}


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, tracking_uri: str) -> dict[str, str]:
    """The local profile with every folder under tmp_path/pea and MLflow at `tracking_uri`."""
    return {"PEA_DATA_DIR": str(tmp_path / "pea"), "PEA_STORAGE_ROOT": str(tmp_path / "pea" / "root"),
            "PEA_MLFLOW_TRACKING_URI": tracking_uri}


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _timed(pea_cli, *args, **kwargs):
    start = time.monotonic()
    result = pea_cli(*args, **kwargs)
    return result, time.monotonic() - start


def _one_line_error(result, *words: str) -> None:
    """Refused: exit code 2, the `error:` line and its `fix:` line only, naming `words`, no password."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err and SECRET not in result.out + result.err, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("  fix: "), result.err
    for word in words:
        assert word in lines[0], result.err


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_fails_at_once_and_writes_nothing_when_mlflow_is_unreachable(command, tmp_path, pea_cli):
    port = _closed_port()
    before = _files(tmp_path)
    args = COMMANDS[command] + (["--out", str(tmp_path / "out.png")] if command == "generate" else [])
    result, took = _timed(pea_cli, *args, env=_env(tmp_path, f"http://u:{SECRET}@127.0.0.1:{port}"), cwd=tmp_path)
    _one_line_error(result, "unreachable", f"http://u:***@127.0.0.1:{port}", "Connection refused")  # the real cause
    assert took < QUICK_S, f"{command} took {took:.1f} s"
    assert _files(tmp_path) == before  # neither the storage root nor the data dir (models, SQLite) was touched


@contextmanager
def _failing_mlflow():
    """A server on 127.0.0.1 that answers /health but fails every API call with 503, which MLflow's client
    retries; yields its URL (with a user and password) and the list of the requests it saw."""
    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200 if self.path == "/health" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with serving(Handler) as port:
        yield f"http://u:{SECRET}@127.0.0.1:{port}", seen


def test_the_health_check_sends_the_uris_user_and_password_as_basic_auth(tmp_path, pea_cli):
    """A URI with `user:password@` reaches its server (urllib alone would look the user up as a host name)."""
    with _failing_mlflow() as (uri, seen):
        result = pea_cli("profile", "--check", env=_env(tmp_path, uri), cwd=tmp_path)
    assert result.code == 0, result.err
    assert "reachable" in result.out and SECRET not in result.out + result.err
    assert seen == [("/health", "Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode())]


def test_generate_gives_up_within_seconds_on_a_server_that_fails(tmp_path, pea_cli):
    """Healthy at the check, failing after: the short retry policy ends the lookup in seconds (MLflow's own
    takes minutes), and the error names the failing server, not a model that does not exist."""
    with _failing_mlflow() as (uri, seen):
        result, took = _timed(pea_cli, *COMMANDS["generate"], "--out", str(tmp_path / "out.png"),
                              env=_env(tmp_path, uri), cwd=tmp_path)
    _one_line_error(result, "could not look up models:/pea-ko/1", "http://u:***@127.0.0.1:")
    assert took < QUICK_S, f"generate took {took:.1f} s"
    calls = [path for path, _ in seen if path != "/health"]
    assert len(calls) == 1 + int(_MLFLOW_SHORT_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), calls
    assert not (tmp_path / "out.png").exists()


def _policy_for(interactive: bool, **user_env: str) -> dict[str, str]:
    """What `_library_env` leaves in MLflow's HTTP variables, over `user_env`."""
    with mock.patch.dict(os.environ):
        for key in _MLFLOW_SHORT_RETRIES:
            os.environ.pop(key, None)
        os.environ.update(user_env)
        _library_env(local_ray=True, interactive=interactive)
        return {key: os.environ[key] for key in _MLFLOW_SHORT_RETRIES if key in os.environ}


def test_interactive_commands_get_a_short_mlflow_retry_policy():
    policy = _policy_for(interactive=True)
    assert policy == _MLFLOW_SHORT_RETRIES
    with mock.patch.dict(os.environ, policy):  # names and values that MLflow itself reads
        assert [getattr(mlflow.environment_variables, key).get() for key in policy] == [2, 1, 10]


def test_long_running_commands_keep_mlflows_own_retries():
    """train, evaluate and train-language: their MLflow writes after hours of work outlast a server restart."""
    assert _policy_for(interactive=False) == {}


def test_a_users_own_mlflow_retry_setting_wins():
    policy = _policy_for(interactive=True, MLFLOW_HTTP_REQUEST_TIMEOUT="60")
    assert policy == _MLFLOW_SHORT_RETRIES | {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def test_an_mlflow_error_mid_command_is_one_line_without_the_password(monkeypatch, tmp_path, pea_cli):
    """A server that fails after the health check: MLflow's own message quotes the request URI."""
    from mlflow.exceptions import MlflowException

    uri = f"http://u:{SECRET}@127.0.0.1:9"

    def failing(*args, **kwargs):
        raise MlflowException(f"API request to {uri}/api/2.0/mlflow/registered-models/get failed\nwith 503")

    monkeypatch.setattr("pea.registry.resolve_adapter", failing)
    args = ("generate", "빨간 원", "--lang", "ko", "--adapter", str(tmp_path / "adapter"), "--preset", "tiny-sdxl")
    result = pea_cli(*args, env=_env(tmp_path, f"sqlite:///{tmp_path}/mlflow.db"), cwd=tmp_path)
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert result.err.strip().splitlines() == ["error: MLflow: API request to http://u:***@127.0.0.1:9/api/2.0/mlflow/"
                                               "registered-models/get failed"]
    with pytest.raises(MlflowException):  # --debug: the traceback
        pea_cli("--debug", *args, env=_env(tmp_path, f"sqlite:///{tmp_path}/mlflow.db"), cwd=tmp_path)
