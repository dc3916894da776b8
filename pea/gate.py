"""The champion gate, as a pure function of two metric tables (candidate and champion, same evaluation run)."""

from dataclasses import dataclass

from pea.evaluate.config import GateConfig


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    numbers: dict[str, float]  # what the decision read, for the version's tags

    def tags(self) -> dict[str, str]:
        return {"pea.gate.decision": "promoted" if self.promote else "kept champion",
                "pea.gate.reason": self.reason, **{f"pea.gate.{k}": f"{v:.6g}" for k, v in self.numbers.items()}}


def decide(candidate: dict[str, float], champion: dict[str, float] | None, primary: str, guard: str,
           gate: GateConfig, champion_problem: str | None = None) -> Decision:
    """Promote when there is no champion, or when the candidate beats it on `primary` by more than
    `min_gain` without falling more than `tolerance` on `guard`. A champion that exists but could not be
    evaluated is kept: there is nothing to compare against."""
    if champion_problem:
        return Decision(False, f"the champion could not be evaluated ({champion_problem}); keeping it", {})
    if champion is None:
        return Decision(True, "no champion yet", {"candidate_primary": candidate[primary]})
    gain = candidate[primary] - champion[primary]
    drop = champion[guard] - candidate[guard]
    numbers = {"candidate_primary": candidate[primary], "champion_primary": champion[primary],
               "candidate_guard": candidate[guard], "champion_guard": champion[guard], "tolerance": gate.tolerance}
    if gain <= gate.min_gain:
        return Decision(False, f"{primary} {candidate[primary]:.4f} does not beat the champion's {champion[primary]:.4f}",
                        numbers)
    if drop > gate.tolerance:
        return Decision(False, f"{guard} falls by {drop:.4f}, more than the tolerance {gate.tolerance}", numbers)
    return Decision(True, f"{primary} +{gain:.4f} over the champion, {guard} {-drop:+.4f} "
                          f"(tolerance {gate.tolerance})", numbers)
