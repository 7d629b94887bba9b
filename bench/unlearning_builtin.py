"""The built-in unlearning benchmark: GA, GradDiff, NPO, NPO+RT, SimNPO and CATNIP on builtin:fictitious_authors
forget10 with SmolLM2-135M-Instruct (recipes/unlearn/<method>_builtin.yaml); one command, one table.

    python bench/unlearning_builtin.py [--only NAME ...] [--table-only] [extra a.b=c overrides for every run]

The first run trains the target and retain models (the learn stage, cached in $ALIGNKIT_CACHE/unlearn); every
later method reuses them and their evaluations. Each run is a normal `launch.py` run in runs/unlearning_builtin/<name>
whose unlearning_eval.json the table reads (metrics: alignkit/evaluation/unlearning.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import _runs  # bench/_runs.py: the shared run loop

RUNS = {name: (f"recipes/unlearn/{name}_builtin.yaml", [])
        for name in ("ga", "grad_diff", "npo", "npo_rt", "simnpo", "catnip")}
COLUMNS = (("forget/rouge", "forget ROUGE"), ("forget/fact", "forget facts"), ("retain/rouge", "retain ROUGE"),
           ("retain/fact", "retain facts"), ("forget_quality", "forget quality"), ("utility", "utility"),
           ("mia/mink", "MIA AUC (Min-K)"), ("privleak", "PrivLeak"))
ATTACKS = (("unlearned + relearn", "forget/fact", "relearned facts"), ("unlearned int4", "forget/fact", "int4 facts"),
           ("unlearned int4", "retain/fact", "int4 retain facts"))


def table(root: Path) -> str:
    header = [c[1] for c in COLUMNS] + [a[2] for a in ATTACKS] + ["unlearn + eval wall s"]
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    done = {n: json.loads((root / _runs.slug(n) / "unlearning_eval.json").read_text())["metrics"]
            for n in RUNS if (root / _runs.slug(n) / "unlearning_eval.json").exists()}
    if not done:
        return "(no finished runs)"

    def cells(m: dict) -> list[str]:
        return [f"{m[k]:.3f}" if k in m else "—" for k, _ in COLUMNS]

    first = next(iter(done.values()))
    for row in ("target", "retain"):
        if row in first:
            lines.append(f"| {row} model | " + " | ".join(cells(first[row]) + ["—"] * (len(ATTACKS) + 1)) + " |")
    for name, rows in done.items():
        wall = root / _runs.slug(name) / "wall_s"
        attacks = [f"{rows[r][k]:.3f}" if r in rows and k in rows[r] else "—" for r, k, _ in ATTACKS]
        lines.append(f"| {name} | " + " | ".join(cells(rows["unlearned"]) + attacks +
                                                [wall.read_text().strip() if wall.exists() else "?"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    _runs.main(__doc__, "runs/unlearning_builtin", RUNS, table, common=("trainer.progress_bar=false",))
