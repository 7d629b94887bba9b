"""Full fine-tuning vs LoRA (r = 16, alpha 32, every linear layer) on SmolLM2-135M-Instruct, side by side in one
command: DPO (precomputed reference: the quickstart) and PMPO (live reference: with LoRA the reference is the policy
with its adapters off, so the second model goes away). 20 steps each, 2 Ray Train workers, ZeRO-2.

    python bench/lora.py [--only NAME ...] [--table-only] [extra a.b=c overrides for every run]

Per run: resident memory of the largest worker while it trains (the most of sys/rss_mb over the training steps) and its
peak since start (sys/peak_rss_mb: model loading included), steady training tokens/s (mean over steps 2..20), and the
held-out metrics of the quickstart's report (format / correct rate of greedy generations, eval/loss). LoRA runs
use a 10x larger learning rate (3e-4 instead of 3e-5), as LoRA usually wants. Results: bench/results/lora.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import _runs  # bench/_runs.py: the shared run loop

LORA = ["model.lora={r: 16, alpha: 32}", "optim.lr=3e-4"]
RUNS = {
    "dpo full": ("recipes/quickstart.yaml", []),
    "dpo lora r16": ("recipes/quickstart.yaml", LORA),
    # the PMPO rows were measured at beta 0.5 (lr 3e-5 full, 3e-4 LoRA); the recipe now ships the sweep's best
    "pmpo full (live reference)": ("recipes/pmpo/both_builtin.yaml", ["objective.beta=0.5", "optim.lr=3e-5"]),
    "pmpo lora r16 (reference = adapters off)": ("recipes/pmpo/both_builtin.yaml", ["objective.beta=0.5", *LORA]),
}


def table(root: Path) -> str:
    lines = ["| run | trainable | RSS while training, MB per worker | peak RSS MB | tokens/s (steady) | "
             "eval/loss start → end | format start → after | correct start → after | wall s |", "|---" * 9 + "|"]
    for name in RUNS:
        d = root / _runs.slug(name)
        if not (d / "behaviour.json").exists():
            lines.append(f"| {name} | (not run) |" + " |" * 7)
            continue
        records = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "train/tokens_per_s" in r]
        rate = sum(r["train/tokens_per_s"] for r in steps[1:]) / max(1, len(steps) - 1)
        peak = max(r.get("sys/peak_rss_mb", 0) for r in records)
        training = max(r.get("sys/rss_mb", 0) for r in steps)
        evals = [r["eval/loss"] for r in records if "eval/loss" in r]
        b = json.loads((d / "behaviour.json").read_text())
        s, f = b["start"]["metrics"], b["final"]["metrics"]
        trainable = "all" if "lora" not in name else "adapters (r 16)"
        lines.append(f"| {name} | {trainable} | {training:.0f} | {peak:.0f} | {rate:.0f} | "
                     f"{evals[0]:.3f} → {evals[-1]:.3f} | "
                     f"{s.get('gen/format', 0):.2f} → {f.get('gen/format', 0):.2f} | "
                     f"{s.get('gen/correct', 0):.2f} → {f.get('gen/correct', 0):.2f} | "
                     f"{(d / 'wall_s').read_text().strip() if (d / 'wall_s').exists() else ''} |")
    text = "# Full fine-tuning vs LoRA (python bench/lora.py)\n\n" + "\n".join(lines) + "\n"
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/lora.md").write_text(text)
    return text


if __name__ == "__main__":
    _runs.main(__doc__, "runs/bench_lora", RUNS, table)
