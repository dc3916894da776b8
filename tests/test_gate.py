"""The champion gate: promote only on a real gain without breaking the guard; keep an unreadable champion."""

from pea.evaluate.config import GateConfig
from pea.gate import decide

GATE = GateConfig(tolerance=0.05)


def m(primary, guard):
    return {"mc_clip": primary, "mg_reward": guard}


def test_the_first_candidate_becomes_champion():
    d = decide(m(20.0, 0.1), None, "mc_clip", "mg_reward", GATE)
    assert d.promote and d.reason == "no champion yet" and d.tags()["pea.gate.decision"] == "promoted"


def test_a_better_candidate_within_the_guard_tolerance_is_promoted():
    d = decide(m(21.0, 0.07), m(20.0, 0.1), "mc_clip", "mg_reward", GATE)
    assert d.promote and "+1.0000" in d.reason
    assert d.tags()["pea.gate.champion_primary"] == "20" and d.tags()["pea.gate.candidate_guard"] == "0.07"


def test_a_candidate_that_falls_too_far_on_the_guard_is_not_promoted():
    d = decide(m(21.0, 0.04), m(20.0, 0.1), "mc_clip", "mg_reward", GATE)
    assert not d.promote and "mg_reward falls by 0.0600" in d.reason


def test_a_candidate_that_does_not_beat_the_champion_is_not_promoted():
    for primary in (19.0, 20.0):
        d = decide(m(primary, 0.5), m(20.0, 0.1), "mc_clip", "mg_reward", GATE)
        assert not d.promote and "does not beat" in d.reason
    assert not decide(m(20.5, 0.1), m(20.0, 0.1), "mc_clip", "mg_reward", GateConfig(min_gain=1.0)).promote


def test_a_champion_that_could_not_be_evaluated_is_kept():
    d = decide(m(99.0, 9.0), None, "mc_clip", "mg_reward", GATE, champion_problem="artifacts missing")
    assert not d.promote and "could not be evaluated (artifacts missing)" in d.reason
    assert d.tags()["pea.gate.decision"] == "kept champion"
