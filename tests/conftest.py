import os
import sys

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # as pea.cluster sets it, before any test imports Ray
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One cache of tiny built models for the whole session (building them takes a few seconds)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """One red 64x64 PNG with its Korean caption: the smallest folder source."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    (folder / "a.txt").write_text("빨간 원", encoding="utf-8")
    return folder


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def pea_cli(monkeypatch, capsys):
    """Run the `pea` entry point in this process (the stack is imported once per test session)."""
    from flows.cli import main

    def run(*args: str, env: dict[str, str] | None = None, cwd=None) -> CliResult:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["pea", *args])
        code = 0
        try:
            with mock.patch.dict(os.environ):  # what the entry point sets for the libraries it runs stays in it
                main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_running():
    """A stage run in a test starts a local Ray (pea.cluster.connect) in this process: it is stopped with the
    module that started it, as every server a test starts is."""
    yield
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
