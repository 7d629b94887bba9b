"""DPO on pairs vs PMPO on the same data unpaired (both sides, rejected only, accepted only) and PMPO rejected-only
without the KL term (beta = 0), all on SmolLM2-135M-Instruct with the built-in data; one command, one table.

    python bench/pmpo_vs_dpo.py [--steps 20] [extra a.b=c overrides for every run]

Each run is a normal `launch.py` run in runs/pmpo_vs_dpo/<name>; the table reads their behaviour.json and
metrics.jsonl, so `--table-only` re-prints it without training.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "dpo (pairs)": ("recipes/quickstart.yaml", []),
    "pmpo both (unpaired)": ("recipes/pmpo/both_builtin.yaml", []),
    "pmpo rejected only, beta 0.5": ("recipes/pmpo/rejected_only_builtin.yaml", []),
    "pmpo accepted only": ("recipes/pmpo/accepted_only_builtin.yaml", []),
    "pmpo both, beta 2, lr 1e-5": ("recipes/pmpo/both_builtin.yaml", ["objective.beta=2.0", "optim.lr=1e-5"]),
    "pmpo rejected only, beta 0": ("recipes/pmpo/rejected_only_builtin.yaml", ["objective.beta=0.0"]),
    "pmpo rejected only, beta 2": ("recipes/pmpo/rejected_only_builtin.yaml", ["objective.beta=2.0"]),
    "pmpo rejected only, beta 5, lr 1e-5": ("recipes/pmpo/rejected_only_builtin.yaml",
                                            ["objective.beta=5.0", "optim.lr=1e-5"]),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def last_eval(run_dir: Path) -> dict:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/loss" in r]
    return {"start": evals[0], "end": evals[-1]}


def table(root: Path) -> str:
    lines = ["| run | format (start → after) | correct | words | KL(ref‖π) per response | "
             "log π accepted / rejected (held-out) | wall s |", "|---|---|---|---|---|---|---|"]
    for name in RUNS:
        d = root / slug(name)
        if not (d / "behaviour.json").exists():
            lines.append(f"| {name} | (not run) | | | | | |")
            continue
        b = json.loads((d / "behaviour.json").read_text())
        s, f = b["start"]["metrics"], b["final"]["metrics"]
        ev = last_eval(d)["end"]
        kl = ev.get("eval/kl")
        if "eval/logps/chosen" in ev:
            acc_rej = f"{ev['eval/logps/chosen']:.1f} / {ev['eval/logps/rejected']:.1f}"
        else:
            nan = float("nan")
            acc_rej = f"{ev.get('eval/logps/accepted', nan):.1f} / {ev.get('eval/logps/rejected', nan):.1f}"
        wall = (d / "wall_s").read_text().strip() if (d / "wall_s").exists() else "?"
        lines.append(f"| {name} | {s['gen/format']:.2f} → {f['gen/format']:.2f} | {s['gen/correct']:.2f} → "
                     f"{f['gen/correct']:.2f} | {s['gen/words']:.1f} → {f['gen/words']:.1f} | "
                     f"{'—' if kl is None else f'{kl:.2f}'} | {acc_rej} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/pmpo_vs_dpo")
    p.add_argument("--only", nargs="*", help="run only these names")
    p.add_argument("--table-only", action="store_true")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    root = Path(args.root)
    if not args.table_only:
        for name, (recipe, extra) in RUNS.items():
            if args.only and name not in args.only:
                continue
            out = root / slug(name)
            start = time.perf_counter()
            print(f"== {name}: {recipe} {' '.join(extra + args.overrides)}", flush=True)
            proc = subprocess.run([sys.executable, "launch.py", recipe, f"run.output_dir={out}", *extra,
                                   *args.overrides], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            (out / "wall_s").write_text(f"{time.perf_counter() - start:.0f}\n")
    print(table(root))


if __name__ == "__main__":
    main()
