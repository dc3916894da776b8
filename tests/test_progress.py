"""The stage line of a multi-stage job, on a fake clock: plain lines throttled off a terminal, one rewritten line
per stage on it, and the log records that drive it from anywhere in the process; and work that reports through
its Progress only, so that nothing else writes over the line."""

import io
import logging
import sys

from pea.progress import FRACTION, STAGE, STAGE_DONE, StageLine, duration, stage_line


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0, 42, 192, 3600 + 5 * 60 + 9)] == ["0s", "42s", "3m12s", "1h05m"]


def test_off_a_terminal_each_stage_prints_its_start_its_end_and_one_update_per_ten_seconds():
    out, clock = io.StringIO(), Clock()
    line = StageLine(out, tty=False, clock=clock)
    clock.now = 60
    line.start(5, 7, "train")
    for step in range(1, 121):  # a step every 0.25 s: 30 s of updates
        clock.now += 0.25
        line(f"step {step}/200", step / 200)
    line.done()
    assert out.getvalue().splitlines() == [
        "stage 5/7 train  elapsed 1m00s",
        "stage 5/7 train  step 40/200  elapsed 1m10s  ETA 40s",
        "stage 5/7 train  step 80/200  elapsed 1m20s  ETA 30s",
        "stage 5/7 train  step 120/200  elapsed 1m30s  ETA 20s",
        "stage 5/7 train  done in 30s  elapsed 1m30s",
    ]


def test_a_stage_whose_fraction_starts_again_times_its_eta_from_the_new_part():
    """The cache stage builds the toy world (fractions 0..1), then encodes (0..1 again)."""
    out, clock = io.StringIO(), Clock()
    line = StageLine(out, tty=False, clock=clock, every_s=0)
    line.start(4, 7, "cache")
    clock.now = 300
    line("toy world: built", 1.0)
    clock.now = 310
    line("encoded 1/4", 0.25)
    assert out.getvalue().splitlines()[-1] == "stage 4/7 cache  encoded 1/4  elapsed 5m10s  ETA 30s"


def test_on_a_terminal_the_line_is_rewritten_and_each_finished_stage_leaves_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out, clock = io.StringIO(), Clock()
    line = StageLine(out, tty=True, clock=clock)
    line.start(6, 7, "evaluate")
    clock.now = 4
    line("  mg candidate: mg_clipscore_native 13.340", 0.5)  # the stage's own indentation is not shown
    clock.now = 8
    line.done()
    line.start(7, 7, "register")
    line.close()  # a stage that failed: its line is ended, not called done
    assert out.getvalue().split("\r\x1b[K") == [
        "", "stage 6/7 evaluate  elapsed 0s",
        "stage 6/7 evaluate  mg candidate: mg_clipscore_native 13.340  elapsed 4s  ETA 4s",
        "stage 6/7 evaluate  done in 8s  elapsed 8s\n", "stage 7/7 register  elapsed 8s\n"]


def test_on_a_narrow_terminal_the_message_is_cut_not_the_times(monkeypatch):
    monkeypatch.setenv("COLUMNS", "47")
    out, clock = io.StringIO(), Clock()
    line = StageLine(out, tty=True, clock=clock)
    line.start(6, 7, "evaluate")
    clock.now = 4
    line("mg candidate: mg_clipscore_native 13.340", 0.5)
    assert out.getvalue().endswith("\r\x1b[Kstage 6/7 evaluate  mg can  elapsed 4s  ETA 4s")


def test_log_records_from_anywhere_in_the_process_drive_the_line():
    out, log = io.StringIO(), logging.getLogger("pea.test.stages")
    log.setLevel(logging.INFO)
    with stage_line(out, tty=False, clock=Clock()):
        log.info("stage 1/2 cache", extra={STAGE: (1, 2, "cache")})
        log.info("cached shard 0", extra={FRACTION: None})
        log.info("an unrelated line")
        log.info("stage 1/2 cache done", extra={STAGE_DONE: (1, 2, "cache")})
    log.info("stage 2/2 train", extra={STAGE: (2, 2, "train")})  # after the block: not shown
    assert out.getvalue().splitlines() == ["stage 1/2 cache  elapsed 0s", "stage 1/2 cache  done in 0s  elapsed 0s"]


def test_an_evaluation_reports_through_its_progress_only_and_draws_no_bars_of_its_own(tmp_path, monkeypatch):
    from PIL import Image

    from pea.evaluate.config import EvalConfig
    from pea.evaluate.prompts import EvalPrompt
    from pea.evaluate.run import evaluate
    from pea.evaluate.suites import Suite

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    class Pipe:  # draws blank images
        device = "cpu"

        def set_progress_bar_config(self, **kwargs) -> None:
            pass

        def __call__(self, prompt, **kwargs):
            return type("Output", (), {"images": [Image.new("RGB", (8, 8)) for _ in prompt]})

    class Score:
        name, text = "score", "native"

        def __call__(self, images, texts) -> list[float]:
            return [1.0] * len(images)

    prompts = [EvalPrompt(id=f"p{i}", native=f"n{i}", english=f"e{i}", lang="ko") for i in range(3)]
    suite = Suite(sets={"mg": prompts, "mc": prompts}, scorers={"mg": [Score()], "mc": [Score()]},
                  translate=lambda ps: [p.english for p in ps], primary="mc_score", guard="mg_score")
    monkeypatch.setattr(sys, "stderr", Terminal())
    reported = []
    evaluate(Pipe(), lambda texts, **kw: Pipe()(texts), None, suite, EvalConfig(steps=1, batch_size=2),
             tmp_path, lambda message, fraction=None: reported.append(fraction))
    assert sys.stderr.getvalue() == ""
    assert reported == [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0]  # MG: candidate, teacher_en, translate; MC: no teacher_en
