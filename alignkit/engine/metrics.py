"""Metrics of the loop: weighted sums reduced across workers, the JSONL writer (rank 0), peak memory."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from alignkit.engine.dist import all_reduce_max, all_reduce_sum


class MetricsWriter:
    """Rank 0 appends one JSON object per line to metrics.jsonl, and hands it to the run's trackers."""

    def __init__(self, path: Path | None, trackers=None):
        self.path, self.trackers = path, trackers  # engine/trackers.py Trackers: the same records

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)


class MetricSums:
    """Weighted sums of metrics, reduced across workers. An objective may return a metric as a tensor (weight 1 per
    batch) or as (tensor, weight), e.g. a mean over the accepted samples of a batch with weight = their count; a
    metric absent from a batch simply adds no weight. Every worker must know every key before the reduction, so the
    keys come from the objective's declared metric names plus what was seen."""

    def __init__(self):
        self.values: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict, scale: float = 1.0) -> None:
        for key, value in metrics.items():
            value, weight = value if isinstance(value, tuple) else (value, 1.0)
            weight = float(weight) * scale
            self.values[key] = self.values.get(key, 0.0) + float(value.detach()) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def mean_across_workers(self, keys: list[str]) -> dict[str, float]:
        keys = sorted(set(keys) | set(self.values))
        t = torch.tensor([self.values.get(k, 0.0) for k in keys] + [self.weights.get(k, 0.0) for k in keys],
                         dtype=torch.float64)
        t = all_reduce_sum(t)
        n = len(keys)
        return {k: float(t[i] / t[n + i]) for i, k in enumerate(keys) if float(t[n + i]) > 0}


def memory_mb_max() -> tuple[float, float]:
    """(peak, current) resident memory in MB of the largest worker: the peak since the process started (model
    loading included) and now (what training holds)."""
    import resource

    current = 0.0
    try:
        with open("/proc/self/statm") as handle:  # Linux: pages
            current = int(handle.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        pass
    t = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, current], dtype=torch.float64)
    all_reduce_max(t)
    return float(t[0]), float(t[1])
