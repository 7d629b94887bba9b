"""Issue 22's PMPO question: is there a beta x lr where PMPO with both sides (the built-in pairs used unpaired)
matches DPO on the same pairs at DPO's own best lr? And does rejected-only at the best beta improve without
collapse? SmolLM2-135M-Instruct, quickstart settings (20 steps x 8 pairs, 2 workers, ZeRO-2), chosen by the
held-out format rate (64 greedy generations), one seed.

    python bench/pmpo_sweep.py              # both Ray Tune sweeps, then rejected-only at the best beta/lr (~45 min)
    python bench/pmpo_sweep.py --table-only # re-print bench/results/pmpo_sweep.md from the finished runs

The sweeps are recipes/sweeps/pmpo_beta_lr.yaml (beta {0.5, 2} x lr {3e-5, 1e-4}) and
recipes/sweeps/dpo_lr.yaml (lr {3e-5, 1e-4}); every trial's row comes from its own run directory.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from pmpo_vs_dpo import HEADER, row

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {"dpo": ("recipes/sweeps/dpo_lr.yaml", "runs/dpo_lr-sweep"),
          "pmpo both": ("recipes/sweeps/pmpo_beta_lr.yaml", "runs/pmpo_beta_lr-sweep")}
REJECTED = "runs/pmpo_sweep/rejected_only_best"


def trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv") as handle:
        return list(csv.DictReader(handle))


def launch(*args: str) -> None:
    start = time.perf_counter()
    print("==", " ".join(args), flush=True)
    subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, check=True)
    print(f"   {time.perf_counter() - start:.0f} s", flush=True)


def best_pmpo() -> dict:
    return trials(ROOT / SWEEPS["pmpo both"][1])[0]  # results.csv is sorted by the metric


def table() -> str:
    lines = list(HEADER)
    for name, (_, sweep_dir) in SWEEPS.items():
        for t in trials(ROOT / sweep_dir):
            keys = {k: v for k, v in t.items() if k.startswith(("objective.", "optim."))}
            label = f"{name}, " + ", ".join(f"{k.split('.')[-1]} {float(v):g}" for k, v in keys.items())
            lines.append(row(label, Path(t["run_dir"])))
    best = best_pmpo()
    if (ROOT / REJECTED / "behaviour.json").exists():
        lines.append(row(f"pmpo rejected only, beta {float(best['objective.beta']):g}, lr "
                         f"{float(best['optim.lr']):g}", ROOT / REJECTED))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    if not args.table_only:
        for recipe, _ in SWEEPS.values():
            launch(recipe, "--sweep", "run.overwrite=true")
        best = best_pmpo()
        start = time.perf_counter()
        launch("recipes/pmpo/rejected_only_builtin.yaml", f"run.output_dir={REJECTED}", "run.overwrite=true",
               f"objective.beta={best['objective.beta']}", f"optim.lr={best['optim.lr']}")
        (ROOT / REJECTED / "wall_s").write_text(f"{time.perf_counter() - start:.0f}\n")
    text = table()
    print(text)
    (ROOT / "bench" / "results" / "pmpo_sweep.md").write_text(
        "# PMPO beta x lr vs DPO lr (`python bench/pmpo_sweep.py`; sorted by held-out format within each sweep)\n\n"
        + text + "\n")


if __name__ == "__main__":
    main()
