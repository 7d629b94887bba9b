"""The per-step-negatives table and plot (issue: per-step negatives): SmolLM2-135M-Instruct on `builtin:chain_arith`,
CPU, one command. π_sft, the samples and the Q̂ stage are made once (cached in $ALIGNKIT_CACHE/step_negatives/)
for `--mined` problems; each method then trains from π_sft on the rows of the first N problems, N in `--sizes`.
Every run is a normal `launch.py` run in <root>/<method>_<N>; a finished run is not run again.

    python bench/step_negatives.py [--root runs/step_bench] [--sizes 16 32 64] [--mined 64] [--sft-sizes 128 256 512]

Writes bench/results/step_negatives.{md,json,png}: held-out greedy accuracy (64 test problems) vs N per method,
π_sft's own accuracy, how often MC finds the checker's true first error, rollouts and seconds per pair.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"sft": "recipes/step_negatives/sft_builtin.yaml", "rft": "recipes/step_negatives/rft_builtin.yaml",
           "full_dpo": "recipes/step_negatives/full_dpo_builtin.yaml",
           "step_dpo": "recipes/step_negatives/step_dpo_builtin.yaml",
           "step_awr": "recipes/step_negatives/step_awr_builtin.yaml"}
LABELS = {"sft": "SFT (gold solutions)", "rft": "RFT (own right samples)", "full_dpo": "full-response DPO",
          "step_dpo": "per-step DPO", "step_awr": "per-step AWR"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/step_bench")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--mined", type=int, default=64)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--sft-sizes", type=int, nargs="*", default=[128, 256, 512],
                   help="more SFT-only sizes (no mining): where SFT on more gold data catches up")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where the table and plot go")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides for every run")
    args = p.parse_args()
    root = (ROOT / args.root).resolve()
    results = []
    # the largest size first: its run makes (and caches) π_sft, the samples and the Q̂ of all mined problems
    jobs = [(size, method) for size in sorted(args.sizes, reverse=True) for method in args.methods]
    jobs += [(size, "sft") for size in args.sft_sizes if size not in args.sizes and "sft" in args.methods]
    for size, method in jobs:
        out = root / f"{method}_{size}"
        mined = max(args.mined, size)  # (SFT-only sizes past the mined problems: nothing is mined for SFT)
        if not (out / "steps.json").exists():
            command = [sys.executable, "launch.py", METHODS[method], f"run.output_dir={out}", "run.overwrite=true",
                       f"steps.num_problems={mined}", f"steps.use_problems={size}",
                       "eval.compare_to_start=false", *args.overrides]
            print("==", " ".join(command[1:]), flush=True)
            start = time.perf_counter()
            proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                continue
            (out / "wall_s").write_text(f"{time.perf_counter() - start:.0f}\n")
        summary = json.loads((out / "steps.json").read_text())
        results.append({"method": method, "size": size, "accuracy": summary["held_out"]["final"]["gen/correct"],
                        "rows": summary["rows"], "summary": summary,
                        "wall_s": float((out / "wall_s").read_text()) if (out / "wall_s").exists() else None})
        print(f"{method} N={size}: accuracy {results[-1]['accuracy']:.3f} from {summary['rows']} rows", flush=True)
    pi_sft = _pi_sft_accuracy(results, root)
    report = {"sizes": sorted({x["size"] for x in results}), "mined": args.mined, "results": results,
              "pi_sft": pi_sft}
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "step_negatives.json").write_text(json.dumps(report, indent=1))
    (out_dir / "step_negatives.md").write_text(markdown(report))
    _plot(report, out_dir / "step_negatives.png")
    print(markdown(report))


def _pi_sft_accuracy(results: list[dict], root: Path) -> float | None:
    """π_sft's held-out accuracy (greedy, the same 64 problems), evaluated once."""
    if not results:
        return None
    cache = root / "pi_sft_eval.json"
    if cache.exists():
        return json.loads(cache.read_text())["accuracy"]
    import torch

    from alignkit.data.chain_arith import chain_arith, score_chain
    from alignkit.rollout.hf import HFEngine
    from alignkit.rollout.types import SamplingParams

    torch.set_num_threads(2)
    rows = chain_arith("test")[:64]
    engine = HFEngine(results[0]["summary"]["pi_sft"], batch_size=64)
    out = sorted(engine.generate([r["prompt"] for r in rows], SamplingParams(temperature=0, max_tokens=64)),
                 key=lambda c: c.prompt_index)
    accuracy = sum(score_chain(r, c.text)["correct"] for r, c in zip(rows, out)) / len(rows)
    cache.write_text(json.dumps({"accuracy": accuracy}))
    return accuracy


def markdown(r: dict) -> str:
    sizes = r["sizes"]
    lines = [f"Held-out greedy accuracy on 64 `chain_arith` test problems vs N synthetic problems used (all mined "
             f"once from {r['mined']}); π_sft: {r['pi_sft']}. `python bench/step_negatives.py`.", "",
             "| method | " + " | ".join(f"N={n}" for n in sizes) + f" | rows at N={r['mined']} |",
             "|---" * (len(sizes) + 2) + "|"]
    for method in METHODS:
        got = {x["size"]: x for x in r["results"] if x["method"] == method}
        if got:
            lines.append(f"| {LABELS[method]} | " + " | ".join(f"{got[n]['accuracy']:.3f}" if n in got else "—"
                                                            for n in sizes)
                         + f" | {got.get(r['mined'], {}).get('rows', '—')} |")
    step = next((x["summary"] for x in r["results"] if x["method"] == "step_dpo" and x["size"] == r["mined"]), None)
    if step:
        v = step["values"]
        lines += ["", f"Mining (N={r['mined']}): {step['samples']} samples, {step['right_samples']} right; "
                      f"{step.get('negatives')} negatives valued, {step.get('with_pit')} with a pit; Q̂ of "
                      f"{v.get('prefixes')} prefixes from {v.get('rollouts')} rollouts in {v.get('generate_calls')} "
                      f"call(s), {v.get('seconds', 0):.0f} s; MC finds the checker's true first error in "
                      f"{step.get('mc_finds_true_first_error')} of negatives; {step['rollouts_per_row']:.1f} rollouts "
                      f"and {step['seconds_per_row']:.2f} s per pair."]
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        pts = sorted((x["size"], x["accuracy"]) for x in r["results"] if x["method"] == method)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=LABELS[method])
    if r["pi_sft"] is not None:
        ax.axhline(r["pi_sft"], color="grey", linestyle="--", label="π_sft")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("synthetic problems used (N)")
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
