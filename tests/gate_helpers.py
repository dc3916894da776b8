"""What the champion gate must have decided about a registered version, recomputed with the gate's own function
from the numbers its evaluation recorded, so that a test can assert the decision instead of accepting either."""

from pea.evaluate.config import GateConfig
from pea.gate import Decision, decide


def recorded_metrics(client, run_id: str, system: str) -> dict[str, float]:
    """The `eval.<system>.<metric>` means the evaluation logged on the training run (pea/evaluate/stage.py)."""
    prefix = f"eval.{system}."
    return {k.removeprefix(prefix): v for k, v in client.get_run(run_id).data.metrics.items() if k.startswith(prefix)}


def expected_decision(client, version, gate: GateConfig = GateConfig()) -> Decision:
    """pea.gate.decide on the version's candidate metrics and those of the champion it was evaluated against
    (none recorded: there was no champion), with the primary and guard metric named on the version."""
    candidate = recorded_metrics(client, version.run_id, "candidate")
    champion = recorded_metrics(client, version.run_id, "champion") or None
    assert candidate, f"no eval.candidate.* metrics on run {version.run_id}"
    return decide(candidate, champion, version.tags["pea.primary"], version.tags["pea.guard"], gate)
