"""Bradley-Terry vs causal reward models on the built-in spurious-length benchmark (SmolLM2-135M-Instruct backbone,
same data, order, steps and learning rate); one command, one table.

    python bench/reward_bt_vs_causal.py [--only NAME ...] [--table-only] [extra a.b=c overrides for every run]
    python bench/reward_bt_vs_causal.py --only bt "causal (shipped)"     # the shipped recipes only (~25 min)

Each run is a normal `launch.py` run in runs/reward_bt_vs_causal/<name>; the table reads their reward_eval.json
(metrics: alignkit/evaluation/reward.py), so `--table-only` re-prints it without training.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import _runs  # bench/_runs.py: the shared run loop
import yaml

SWEEP = Path("runs/causal_rm_lam_features-sweep")

# The shipped recipes: 2 epochs (64 steps x 32 pairs), the top 4 blocks + norm + head trained at lr 1e-4, bf16
# autocast; the causal RM at the lam / features recipes/sweeps/causal_rm_lam_features.yaml chose.
RUNS = {
    "bt": ("recipes/reward/bt_builtin.yaml", []),
    "causal (shipped)": ("recipes/reward/causal_builtin.yaml", []),
}
# The first measurement (0.62 epoch, full fine-tuning, 16-pair micro-batches, fp32), kept reproducible.
FIRST_BUDGET = ["optim.lr=2e-5", "optim.trainable=[]", "trainer.max_steps=40", "trainer.micro_batch_size=16",
                "trainer.precision=fp32", "trainer.eval_every=20"]
RUNS.update({
    "bt, 0.62 epoch": ("recipes/reward/bt_builtin.yaml", FIRST_BUDGET),
    "causal, repr, conditional, lam 1, 0.62 epoch": (
        "recipes/reward/causal_builtin.yaml", [*FIRST_BUDGET, "objective.features=repr", "objective.lam=1.0",
                                               "objective.estimator=biased", "data.spurious_bins=4"]),
    "causal, reward, conditional, unbiased, 2 bins, lam 1, 0.62 epoch": (
        "recipes/reward/causal_builtin.yaml", [*FIRST_BUDGET, "objective.features=reward", "objective.lam=1.0",
                                               "objective.estimator=unbiased", "data.spurious_bins=2"]),
    "causal, reward, conditional, 2 bins, lam 1, 0.62 epoch": (
        "recipes/reward/causal_builtin.yaml", [*FIRST_BUDGET, "objective.features=reward", "objective.lam=1.0",
                                               "objective.estimator=biased", "data.spurious_bins=2"]),
})
COLUMNS = (("in_distribution", "accuracy", "in-dist acc"), ("shifted", "accuracy", "shifted acc"),
           ("shifted", "matched_length_corr", "length corr (matched)"), ("shifted", "cf_delta", "cf Δreward / std"),
           ("shifted", "cf_flip_rate", "flips by padding"), ("shifted", "bon_content", "best-of-6 right"),
           ("shifted", "bon_length_drift", "best-of-6 length drift (tok)"),
           ("shifted", "bon_padded", "best-of-6 padded"))



def _row(name: str, d: Path) -> str:
    r = json.loads((d / "reward_eval.json").read_text())
    wall = (d / "wall_s").read_text().strip() if (d / "wall_s").exists() else "?"
    steps = [json.loads(x).get("time/step_s") for x in (d / "metrics.jsonl").read_text().splitlines()]
    median = statistics.median(s for s in steps if s is not None)
    return f"| {name} | " + " | ".join(f"{r[s][k]:.3f}" for s, k, _ in COLUMNS) + f" | {median:.1f} | {wall} |"


def table(root: Path, sweep: Path = SWEEP) -> str:
    head = ["| reward model | " + " | ".join(c[2] for c in COLUMNS) + " | median s/step | wall s |",
            "|---" * (len(COLUMNS) + 3) + "|"]
    lines = list(head)
    for name in RUNS:
        d = root / _runs.slug(name)
        if not (d / "reward_eval.json").exists():
            lines.append(f"| {name} | (not run) |" + " |" * (len(COLUMNS) + 1))
            continue
        lines.append(_row(name, d))
    # the lam x features sweep's trials (recipes/sweeps/causal_rm_lam_features.yaml), at the shipped recipes' budget
    trials = sorted(p.parent for p in sweep.glob("*/reward_eval.json"))
    if trials:
        lines += ["", f"Sweep trials ({sweep}; wall s: not recorded per trial):", "", *head]
        for d in trials:
            o = yaml.safe_load((d / "recipe.yaml").read_text())["objective"]
            lines.append(_row(f"causal, {o['features']}, lam {o['lam']:g}", d))
    return "\n".join(lines)


if __name__ == "__main__":
    _runs.main(__doc__, "runs/reward_bt_vs_causal", RUNS, table, common=("trainer.progress_bar=false",))
