"""The FCP table (issue: feedback-conditional policies): SmolLM2-135M-Instruct on `builtin:chain_arith`, CPU, one
command. Every stage is a normal `launch.py` run of a recipe in recipes/fcp/ (in <root>/<name>); a stage whose
`final/` exists is not run again unless a stage it starts from finished after it (--fresh reruns everything), so
a rerun only re-evaluates.

    python bench/fcp.py [--root runs/fcp_bench] [--eval-size 64] [--fresh]

Stages: the warm-start SFT (the "base": SmolLM2 solves 0/64 zero-shot) -> from it, one round of 64 prompts x 8
samples for SFT on all responses, RFT (right ones), offline FCP (one right + one wrong per mixed prompt, with the
critic's feedback); 3 rounds x 16 prompts x 4 samples of online rejection sampling -> from offline FCP, 3 rounds of
bootstrapping, partially online (4 steps of 16 rows per round) and fully online (1 step of 64 rows per round);
3 rounds of online rejection sampling from RFT (the same rollout budget as FCP + bootstrap: 512 + 3 x 64).
Evaluation: greedy answers to the first `--eval-size` held-out problems (test split), scored by the exact checker;
FCP models under one c+ per question (the pool of the offline run's high-scoring feedback, no length words) and,
for the controllability check, under a c- (its feedback scoring <= 0.3). Writes bench/results/fcp.md and .json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stages(root: Path) -> list[tuple[str, str, list[str]]]:
    warm, offline = root / "warmstart" / "final", root / "offline_fcp"
    return [
        ("warmstart", "recipes/fcp/warmstart_builtin.yaml", []),
        ("sft_all", "recipes/fcp/sft_all_builtin.yaml", [f"model.path={warm}"]),
        ("rft", "recipes/fcp/rft_builtin.yaml", [f"model.path={warm}"]),
        ("offline_fcp", "recipes/fcp/offline_builtin.yaml", [f"model.path={warm}"]),
        ("online_rs", "recipes/fcp/online_rs_builtin.yaml", [f"model.path={warm}"]),
        # the bootstrapping runs' whole budget (the offline round's 512 samples + 3 rounds of 64) for RS too
        ("rft_online_rs", "recipes/fcp/online_rs_builtin.yaml",
         [f"model.path={root / 'rft' / 'final'}", "run.name=fcp_control_rft_online_rs_builtin"]),
        ("bootstrap_partial", "recipes/fcp/bootstrap_builtin.yaml",
         [f"model.path={offline / 'final'}", f"online.rows_params.conditions={offline}"]),
        ("bootstrap_full", "recipes/fcp/bootstrap_full_builtin.yaml",
         [f"model.path={offline / 'final'}", f"online.rows_params.conditions={offline}"]),
    ]


def run_stage(root: Path, name: str, recipe: str, overrides: list[str], fresh: bool) -> float | None:
    out = root / name
    if (out / "final" / "config.json").exists() and not fresh:
        print(f"== {name}: done earlier ({out})", flush=True)
        return float((out / "wall_s").read_text()) if (out / "wall_s").exists() else None
    command = [sys.executable, "launch.py", recipe, f"run.output_dir={out}", "run.overwrite=true", *overrides]
    print("==", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"stage {name} failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    (out / "wall_s").write_text(f"{wall:.0f}\n")
    return wall


def evaluate(model_dir: Path, rows: list[dict], prompts: list, max_tokens: int = 64) -> dict:
    from alignkit.data.chain_arith import score_chain
    from alignkit.rollout.hf import HFEngine
    from alignkit.rollout.types import SamplingParams

    engine = HFEngine(str(model_dir), batch_size=64)
    out = sorted(engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens)),
                 key=lambda c: c.prompt_index)
    scores = [score_chain(r, c.text) for r, c in zip(rows, out)]
    return {"accuracy": sum(s["correct"] for s in scores) / len(rows),
            "format": sum(s["format"] for s in scores) / len(rows),
            "tokens": sum(len(c.token_ids) for c in out) / len(rows), "example": out[0].text}


def rounds(run: Path) -> list[dict]:
    path = run / "rounds.json"
    return [r for r in json.loads(path.read_text()) if r["round"] >= 0] if path.exists() else []


def run_stages(root: Path, fresh: bool, run=None) -> dict[str, float | None]:
    """Every stage, skipping the ones done earlier, except a stage built on a stage (its model or its rows) that
    finished after it: one that ran again, in this invocation or an earlier one."""
    run = run or run_stage
    walls, done = {}, lambda name: root / name / "final" / "config.json"
    for name, recipe, overrides in stages(root):
        upstream = [u for u, _, _ in stages(root) if any(f"{root / u}/" in f"{x}/" for x in overrides)]
        stale = fresh or (done(name).exists() and any(
            done(u).exists() and done(u).stat().st_mtime_ns > done(name).stat().st_mtime_ns for u in upstream))
        walls[name] = run(root, name, recipe, overrides, stale)
    return walls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="runs/fcp_bench")
    p.add_argument("--eval-size", type=int, default=64)
    p.add_argument("--fresh", action="store_true", help="rerun every stage")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where fcp.md and fcp.json go")
    args = p.parse_args()
    root = (ROOT / args.root).resolve()
    walls = run_stages(root, args.fresh)

    import torch

    from alignkit.data.chain_arith import chain_arith
    from alignkit.kinds.feedback import condition_pool, fcp_prompt, question_text
    from alignkit.rollout.builders import load_conditions

    torch.set_num_threads(2)
    test = chain_arith("test")[:args.eval_size]
    offline_rows = [json.loads(x) for f in sorted((root / "offline_fcp" / "rows").glob("*.jsonl"))
                    for x in f.read_text().splitlines()]
    positive, negative = load_conditions(str(root / "offline_fcp")), condition_pool(offline_rows, 0.3, positive=False)

    def under(pool):  # one condition per question, fixed by the question (as the online evaluation does)
        import random

        return [fcp_prompt(r["prompt"], random.Random(f"fcp/evaluate/{question_text(r['prompt'])}").choice(pool))
                for r in test] if pool else []

    plain = [r["prompt"] for r in test]
    rows = [("base (warm-start SFT)", "warmstart", plain), ("SFT on all responses", "sft_all", plain),
            ("RFT (right responses)", "rft", plain), ("offline FCP under c+", "offline_fcp", under(positive)),
            ("offline FCP under c-", "offline_fcp", under(negative)),
            ("online rejection sampling (3 rounds)", "online_rs", plain),
            ("RFT + online rejection sampling (3 rounds; FCP + bootstrap's budget)", "rft_online_rs", plain),
            ("FCP + bootstrap, partially online (3 rounds)", "bootstrap_partial", under(positive)),
            ("FCP + bootstrap, fully online (3 rounds)", "bootstrap_full", under(positive))]
    results = []
    for label, stage, prompts in rows:
        if not prompts:  # (an empty c- pool: no offline feedback scored that low)
            print(f"{label}: skipped (no conditions)", flush=True)
            continue
        start = time.perf_counter()
        metrics = evaluate(root / stage / "final", test, prompts)
        results.append({"method": label, "stage": stage, **metrics, "eval_s": time.perf_counter() - start})
        print(f"{label}: {metrics['accuracy']:.3f} accuracy, {metrics['tokens']:.1f} tokens", flush=True)
    per_round = {stage: rounds(root / stage) for stage in ("online_rs", "rft_online_rs", "bootstrap_partial",
                                                           "bootstrap_full")}
    offline_stats = {stage: rounds(root / stage) for stage in ("sft_all", "rft", "offline_fcp")}
    report = {"eval_size": len(test), "results": results, "walls": walls, "rounds": per_round,
              "offline_rounds": offline_stats, "pool": {"positive": positive, "negative": negative}}
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fcp.json").write_text(json.dumps(report, indent=1))
    (out_dir / "fcp.md").write_text(markdown(report))
    print(markdown(report))


def markdown(r: dict) -> str:
    lines = [f"Held-out greedy accuracy on {r['eval_size']} `chain_arith` test problems (exact checker), "
             "SmolLM2-135M-Instruct, CPU. `python bench/fcp.py`.", "",
             "| method | accuracy | format | mean response tokens |", "|---|---|---|---|"]
    lines += [f"| {x['method']} | {x['accuracy']:.3f} | {x['format']:.3f} | {x['tokens']:.1f} |" for x in r["results"]]
    lines += ["", "Per round (seconds): generate / feedback / train / push; training rows; mean critic score.", "",
              "| run | round | generate s | feedback s | train s | push s | rows | mean score |",
              "|---|---|---|---|---|---|---|---|"]
    for stage, rs in {**r["offline_rounds"], **r["rounds"]}.items():
        for x in rs:
            lines.append(f"| {stage} | {x['round']} | {x.get('time/generate_s', 0):.1f} | "
                         f"{x.get('time/score_s', 0):.2f} | {x.get('time/train_s', 0):.1f} | "
                         f"{x.get('time/push_s', 0):.2f} | {x.get('online/rows', 0):.0f} | "
                         f"{x.get('online/mean_score', float('nan')):.3f} |")
    lines += ["", "Stage wall times (s, incl. Ray start): " + ", ".join(
        f"{k} {v:.0f}" for k, v in r["walls"].items() if v is not None),
        "", f"c+ pool: {len(r['pool']['positive'])} texts; c- pool: {len(r['pool']['negative'])} texts."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
