import os
import sys
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
