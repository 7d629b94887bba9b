"""Where to stop: forget vs retain along each method's unlearning run on the built-in benchmark (SmolLM2-135M,
forget10). Every run exports its model every 4 steps (`trainer.export_every`) and the unlearning pipeline evaluates
them as rows `step N` beside the final one (no attacks: this is about the trade-off curve).

    python bench/unlearning_trajectory.py [--only NAME ...] [--table-only] [extra a.b=c overrides for every run]

The learn stage is shared with bench/unlearning_builtin.py (cached). Writes runs/unlearning_trajectory/<name>/ and
trajectory.png (forget ROUGE against retain ROUGE, one line per method, the target's box shaded).
"""
from __future__ import annotations

import json
from pathlib import Path

import _runs  # bench/_runs.py: the shared run loop

COMMON = ("trainer.max_steps=20", "trainer.export_every=4", "unlearn.relearn_steps=0", "unlearn.quantize_bits=[]",
          "trainer.progress_bar=false")
RUNS = {
    "npo": ("recipes/unlearn/npo_builtin.yaml", []),
    "catnip": ("recipes/unlearn/catnip_builtin.yaml", []),
    "npo_rt a5": ("recipes/unlearn/npo_rt_builtin.yaml", ["objective.retain_weight=5", "trainer.max_steps=40",
                                                          "trainer.export_every=8"]),  # = the recipe's settings
    "grad_diff 60": ("recipes/unlearn/grad_diff_builtin.yaml", ["trainer.max_steps=60", "trainer.export_every=12"]),
    # a lower learning rate for the two forget-only methods: does the curve pass closer to the target?
    "npo lr 2e-5": ("recipes/unlearn/npo_builtin.yaml", ["optim.lr=2e-5", "trainer.max_steps=60",
                                                         "trainer.export_every=12"]),
    "catnip lr 2e-5": ("recipes/unlearn/catnip_builtin.yaml", ["optim.lr=2e-5", "trainer.max_steps=60",
                                                               "trainer.export_every=12"]),
    # a larger NPO beta: the weight 2*sigmoid(beta * log-ratio) of a forget answer vanishes after a few nats of
    # log-ratio at beta 1 (after tens at 0.1). Would each answer then stop once forgotten? Measured: no (README)
    "npo beta 1": ("recipes/unlearn/npo_builtin.yaml", ["objective.beta=1", "trainer.max_steps=40",
                                                        "trainer.export_every=8"]),
    "npo beta 0.5": ("recipes/unlearn/npo_builtin.yaml", ["objective.beta=0.5", "trainer.max_steps=40",
                                                          "trainer.export_every=8"]),
    "npo beta 2": ("recipes/unlearn/npo_builtin.yaml", ["objective.beta=2", "trainer.max_steps=36"]),
    "npo beta 4": ("recipes/unlearn/npo_builtin.yaml", ["objective.beta=4", "trainer.max_steps=36"]),
}
KEYS = (("forget/rouge", "forget ROUGE"), ("forget/fact", "forget facts"), ("retain/rouge", "retain ROUGE"),
        ("retain/fact", "retain facts"), ("utility", "utility"), ("mia/mink", "MIA AUC (Min-K)"))


def _steps(rows: dict) -> list[tuple[str, dict]]:
    ordered = sorted((k for k in rows if k.startswith("step ")), key=lambda k: int(k.split()[1]))
    return [(k, rows[k]) for k in ordered] + [("final", rows["unlearned"])]


def table(root: Path) -> str:
    lines = ["| method | model | " + " | ".join(k[1] for k in KEYS) + " | meets target |",
             "|---" * (len(KEYS) + 3) + "|"]
    done = {n: json.loads((root / _runs.slug(n) / "unlearning_eval.json").read_text())["metrics"]
            for n in RUNS if (root / _runs.slug(n) / "unlearning_eval.json").exists()}
    if not done:
        return "(no finished runs)"
    target = next(iter(done.values()))["target"]
    lines.append("| — | target | " + " | ".join(f"{target[k]:.3f}" for k, _ in KEYS) + " | |")
    for name, rows in done.items():
        for step, m in _steps(rows):
            ok = m["forget/rouge"] <= target["forget/rouge"] / 2 and m["retain/rouge"] >= 0.9 * target["retain/rouge"]
            lines.append(f"| {name} | {step} | " + " | ".join(f"{m[k]:.3f}" for k, _ in KEYS) +
                         f" | {'yes' if ok else 'no'} |")
    _plot(root, done, target)
    return "\n".join(lines) + ("\n\ntarget: forget ROUGE <= half the target model's and retain ROUGE >= 0.9 x the "
                               "target model's (issue 4)")


def _plot(root: Path, done: dict, target: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.fill_between([0, target["forget/rouge"] / 2], 0.9 * target["retain/rouge"], 1.02, color="green", alpha=0.12,
                    label="target region")
    for name, rows in done.items():
        points = [("0", target)] + [(s.split()[-1], m) for s, m in _steps(rows)]
        ax.plot([m["forget/rouge"] for _, m in points], [m["retain/rouge"] for _, m in points], marker="o",
                label=name)
    ax.set_xlabel("forget ROUGE-L recall (lower = forgotten)")
    ax.set_ylabel("retain ROUGE-L recall")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "trajectory.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    _runs.main(__doc__, "runs/unlearning_trajectory", RUNS, table, common=COMMON)
