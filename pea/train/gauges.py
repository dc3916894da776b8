"""Training metrics for Prometheus, through Ray's metrics (every Ray node exports them on its
--metrics-export-port as `ray_pea_train_*`); dashboards/training.json charts exactly these names.

Rank 0 sets them as it logs to MLflow: throughput, each loss term, learning rate, GPU memory and utilisation
(0 on a CPU), and the time of the last checkpoint (the dashboard shows its age)."""

import time

import torch
from ray.util.metrics import Gauge

TAGS = ("lang", "run")
NAMES = {
    "samples_per_second": "training throughput over the last logging window",
    "loss": "loss terms (tag `term`: loss, output_kd, feature_kd, sd, text_kd)",
    "learning_rate": "the optimizer's current learning rate",
    "gpu_memory_bytes": "peak GPU memory allocated by the training process (0 on a CPU)",
    "gpu_utilization_percent": "GPU utilisation as the driver reports it (0 on a CPU)",
    "last_checkpoint_timestamp_seconds": "unix time of the last reported checkpoint",
    "step": "optimizer steps done",
}


class TrainGauges:
    def __init__(self, lang: str, run: str):
        self.tags = {"lang": lang, "run": run}
        self.gauges = {name: Gauge(f"pea_train_{name}", description=text,
                                   tag_keys=TAGS + (("term",) if name == "loss" else ()))
                       for name, text in NAMES.items()}

    def _set(self, name: str, value: float, **extra) -> None:
        self.gauges[name].set(float(value), tags={**self.tags, **extra})

    def observe(self, metrics: dict, device: torch.device) -> None:
        self._set("samples_per_second", metrics["samples_per_s"])
        self._set("learning_rate", metrics["lr"])
        self._set("step", metrics["step"])
        for term in ("loss", "output_kd", "feature_kd", "sd", "text_kd"):
            if term in metrics:
                self._set("loss", metrics[term], term=term)
        cuda = device.type == "cuda"
        self._set("gpu_memory_bytes", torch.cuda.max_memory_allocated(device) if cuda else 0)
        self._set("gpu_utilization_percent", _utilization(device) if cuda else 0)

    def checkpointed(self) -> None:
        self._set("last_checkpoint_timestamp_seconds", time.time())


def _utilization(device: torch.device) -> float:
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 -- needs NVML (pynvml); without it the panel shows 0, not a crash
        return 0.0
