"""Bradley-Terry vs causal reward models on the built-in spurious-length benchmark (SmolLM2-135M-Instruct backbone,
same data, order, steps and learning rate); one command, one table.

    python bench/reward_bt_vs_causal.py [--only NAME ...] [--table-only] [extra a.b=c overrides for every run]

Each run is a normal `launch.py` run in runs/reward_bt_vs_causal/<name>; the table reads their reward_eval.json
(metrics: alignkit/evaluation/reward.py), so `--table-only` re-prints it without training.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import _runs  # bench/_runs.py: the shared run loop

RUNS = {
    "bt": ("recipes/reward/bt_builtin.yaml", []),
    "causal, repr, conditional, lam 1": ("recipes/reward/causal_builtin.yaml",
                                         ["objective.features=repr", "objective.estimator=biased",
                                          "data.spurious_bins=4"]),
    "causal, reward, conditional, unbiased, 2 bins, lam 1": ("recipes/reward/causal_builtin.yaml",
                                                             ["objective.features=reward",
                                                              "objective.estimator=unbiased", "data.spurious_bins=2"]),
    "causal, reward, conditional, 2 bins, lam 1": ("recipes/reward/causal_builtin.yaml",
                                                   ["objective.features=reward", "objective.estimator=biased",
                                                    "data.spurious_bins=2"]),
}
COLUMNS = (("in_distribution", "accuracy", "in-dist acc"), ("shifted", "accuracy", "shifted acc"),
           ("shifted", "matched_length_corr", "length corr (matched)"), ("shifted", "cf_delta", "cf Δreward / std"),
           ("shifted", "cf_flip_rate", "flips by padding"), ("shifted", "bon_content", "best-of-6 right"),
           ("shifted", "bon_length_drift", "best-of-6 length drift (tok)"),
           ("shifted", "bon_padded", "best-of-6 padded"))



def table(root: Path) -> str:
    lines = ["| reward model | " + " | ".join(c[2] for c in COLUMNS) + " | median s/step | wall s |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    for name in RUNS:
        d = root / _runs.slug(name)
        if not (d / "reward_eval.json").exists():
            lines.append(f"| {name} | (not run) |" + " |" * (len(COLUMNS) + 1))
            continue
        r = json.loads((d / "reward_eval.json").read_text())
        wall = (d / "wall_s").read_text().strip() if (d / "wall_s").exists() else "?"
        steps = [json.loads(x).get("time/step_s") for x in (d / "metrics.jsonl").read_text().splitlines()]
        median = statistics.median(s for s in steps if s is not None)
        lines.append(f"| {name} | " + " | ".join(f"{r[s][k]:.3f}" for s, k, _ in COLUMNS)
                     + f" | {median:.1f} | {wall} |")
    return "\n".join(lines)


if __name__ == "__main__":
    _runs.main(__doc__, "runs/reward_bt_vs_causal", RUNS, table, common=("trainer.progress_bar=false",))
