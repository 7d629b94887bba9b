"""Scaling on CPU: samples/s with 1 and 2 Ray Train workers at the same global batch, and peak memory per worker
for DeepSpeed ZeRO 0/1/2/3, on SmolLM2-135M-Instruct (DPO, built-in data), in one run.

    python bench/scaling.py [--steps 6] [--global-batch 8]

Each configuration is a normal `launch.py` run (runs/bench_scaling/<name>); numbers come from its metrics.jsonl:
steady-state step time (steps 2..), and `sys/peak_rss_mb` (the largest worker's peak RSS).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    # name: overrides (global batch = micro x accum x workers is kept equal)
    "1 worker x 2 threads, ZeRO-0": ["cluster.num_workers=1", "cluster.cpus_per_worker=2", "trainer.zero_stage=0"],
    "2 workers x 1 thread, ZeRO-0": ["cluster.num_workers=2", "cluster.cpus_per_worker=1", "trainer.zero_stage=0"],
    "2 workers, ZeRO-1": ["cluster.num_workers=2", "cluster.cpus_per_worker=1", "trainer.zero_stage=1"],
    "2 workers, ZeRO-2": ["cluster.num_workers=2", "cluster.cpus_per_worker=1", "trainer.zero_stage=2"],
    "2 workers, ZeRO-3": ["cluster.num_workers=2", "cluster.cpus_per_worker=1", "trainer.zero_stage=3"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--root", default="runs/bench_scaling")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    root = Path(args.root)
    rows = []
    for name, overrides in CONFIGS.items():
        workers = int(next(o for o in overrides if o.startswith("cluster.num_workers=")).split("=")[1])
        out = root / name.replace(" ", "_").replace(",", "")
        if not args.table_only:
            cmd = [sys.executable, "launch.py", "recipes/quickstart.yaml", f"run.output_dir={out}",
                   f"trainer.max_steps={args.steps}", f"trainer.micro_batch_size={args.global_batch // workers}",
                   "trainer.eval_every=0", "data.eval=null", "eval.generate=false", *overrides]
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            (out / "wall_s").write_text(f"{time.perf_counter() - start:.0f}")
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steady = [r["time/step_s"] for r in records if r["step"] >= 2]
        step_s = sum(steady) / len(steady)
        rows.append((name, args.global_batch / step_s, step_s, records[-1]["sys/peak_rss_mb"],
                     records[-1]["train/loss"], (out / "wall_s").read_text()))
    base = rows[0][1] if rows else 1.0
    print(f"\nDPO on SmolLM2-135M-Instruct, fp32, global batch {args.global_batch} pairs, {args.steps} steps, "
          "2 CPU cores")
    print("| configuration | samples/s (steady) | vs 1 worker | s/step | peak RSS per worker (MB) | "
          "loss at last step | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, sps, step_s, rss, loss, wall in rows:
        print(f"| {name} | {sps:.2f} | x{sps / base:.2f} | {step_s:.2f} | {rss:.0f} | {loss:.4f} | {wall} |")


if __name__ == "__main__":
    main()
