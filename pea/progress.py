"""How long work reports progress: a line for people, and where known the fraction of the stage done, so a
caller (the CLI's terminal, a Prefect progress artifact) never has to infer progress from the lines' text."""

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def __call__(self, message: str, fraction: float | None = None) -> None: ...


def quiet(message: str, fraction: float | None = None) -> None:
    """Report nothing (the default of every stage)."""


def lines(write: Callable[[str], object]) -> Progress:
    """Progress as plain lines through `write` (e.g. typer.echo), the fraction left out."""

    def report(message: str, fraction: float | None = None) -> None:
        write(message)

    return report
