"""How long work reports progress: a line for people, and where known the fraction of the stage done, so a
caller (the CLI's terminal, a Prefect progress artifact) never has to infer progress from the lines' text.

A job of several stages (the `pea` flow) reports through logging, so that its stages may run anywhere in the
process (Prefect tasks, their threads): a record carries its stage or its fraction as one of the attributes
below (logging's `extra`), and `stage_line` shows those records as one terminal line per stage update."""

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

STAGE = "pea_stage"  # (index, total, name): the stage starts
STAGE_DONE = "pea_stage_done"  # (index, total, name): the stage finished
FRACTION = "pea_fraction"  # float | None: a progress line of the current stage


class Progress(Protocol):
    def __call__(self, message: str, fraction: float | None = None) -> None: ...


def quiet(message: str, fraction: float | None = None) -> None:
    """Report nothing (the default of every stage)."""


def lines(write: Callable[[str], object]) -> Progress:
    """Progress as plain lines through `write` (e.g. typer.echo), the fraction left out."""

    def report(message: str, fraction: float | None = None) -> None:
        write(message)

    return report


def duration(seconds: float) -> str:
    """3m12s, 1h05m, 42s."""
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class StageLine:
    """`stage 5/7 train  step 120/200  elapsed 3m12s  ETA 1m40s`: the stage, its latest progress line, the
    job's elapsed time and, where the stage knows its fraction done, the stage's time left.

    On a terminal the line is rewritten in place and each finished stage leaves one line. Elsewhere (CI, a log
    file) lines are appended, so they are throttled: a stage's start and end, and at most one update per
    `every_s` between them."""

    def __init__(self, stream: TextIO, tty: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 every_s: float = 10.0):
        self.stream, self.clock, self.every_s = stream, clock, every_s
        self.tty = stream.isatty() if tty is None else tty
        self.began = clock()
        self.stage: tuple[int, int, str] | None = None
        self.stage_began = self.part_began = self.reported = self.last_shown = self.began
        self.fraction = 0.0

    def start(self, index: int, total: int, name: str) -> None:
        self.stage, self.stage_began = (index, total, name), self.clock()
        self.part_began = self.reported = self.stage_began
        self.fraction = 0.0
        self._show("", force=True)

    def __call__(self, message: str, fraction: float | None = None) -> None:
        """A progress line; `fraction` done of the current part of the stage. A fraction below the last one
        starts a new part (the cache stage may first build the model it needs, then encode): the ETA counts
        from it."""
        if self.stage is None:
            return
        if fraction is not None:
            if fraction < self.fraction:
                self.part_began = self.reported  # the previous part ended with its last report
            self.fraction = fraction
        self.reported = self.clock()
        taken = self.clock() - self.part_began
        eta = f"  ETA {duration(taken * (1 - fraction) / fraction)}" if fraction and taken > 0 else ""
        self._show(f"  {message.strip()}", eta=eta)

    def done(self) -> None:
        if self.stage is not None:
            self._show(f"  done in {duration(self.clock() - self.stage_began)}", force=True, final=True)
            self.stage = None

    def close(self) -> None:
        """End a line left open on the terminal (a stage that failed)."""
        if self.tty and self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.stage = None

    def _show(self, detail: str, eta: str = "", force: bool = False, final: bool = False) -> None:
        now = self.clock()
        if not (force or self.tty or now - self.last_shown >= self.every_s):
            return
        self.last_shown = now
        index, total, name = self.stage
        head, tail = f"stage {index}/{total} {name}{detail}", f"  elapsed {duration(now - self.began)}{eta}"
        if self.tty:  # a line wider than the terminal would wrap and not be rewritten: cut the message, not the times
            width = shutil.get_terminal_size().columns - 1
            self.stream.write(f"\r\x1b[K{head[:max(0, width - len(tail))]}{tail}" + ("\n" if final else ""))
        else:
            self.stream.write(head + tail + "\n")
        self.stream.flush()


class _StageRecords(logging.Handler):
    def __init__(self, line: StageLine):
        super().__init__()
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, STAGE):
            self.line.start(*getattr(record, STAGE))
        elif hasattr(record, STAGE_DONE):
            self.line.done()
        elif hasattr(record, FRACTION):
            self.line(record.getMessage(), getattr(record, FRACTION))


@contextmanager
def stage_line(stream: TextIO, **kwargs) -> Iterator[StageLine]:
    """Show the stage records logged anywhere in the process while the block runs as a StageLine."""
    line = StageLine(stream, **kwargs)
    handler, root, pea_logger = _StageRecords(line), logging.getLogger(), logging.getLogger("pea")
    level = pea_logger.level
    pea_logger.setLevel(min(level or logging.INFO, logging.INFO))  # pea's own progress records (e.g. pea.toy's build)
    root.addHandler(handler)
    try:
        yield line
    finally:
        root.removeHandler(handler)
        pea_logger.setLevel(level)
        line.close()
