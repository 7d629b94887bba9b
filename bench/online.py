"""The persistent online trainer vs the relaunch-per-round loop it replaces, side by side in one run, on the same
prompts, samples, rows per step and optimizer steps (PMPO on the verifier's accept/reject, HF engine on CPU).

    python bench/online.py                                   # tiny-llama, then SmolLM2-135M (ZeRO-2, 1 worker)
    python bench/online.py --models tiny --steps 1 8 --rounds 3
    .venv-vllm/bin/python bench/online.py --engine vllm --models smollm2 --steps 1 --rounds 3

Per round: generate (+ score + build rows), optimizer steps, weight push, and everything else (the overhead: for the
relaunch loop worker start, DeepSpeed init, data preparation, export and reload; for the persistent trainer the
loop's own bookkeeping). The persistent trainer's round wall is the time between its round ends (time/elapsed_s);
its one-time start (Ray Train workers, engines) is reported apart. Results: bench/results/online.md."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"tiny": "builtin:tiny-llama", "smollm2": "builtin:smollm2-135m-instruct"}


ENGINE = "hf"  # --engine: the rollout backend of both loops


def common(model: str, steps: int, rounds: int) -> list[str]:
    # 4 samples x prompts so that every round has exactly the rows its steps read (8 per step), for both loops
    prompts = 2 * steps
    return [f"model.path={MODELS[model]}", f"online.rounds={rounds}", f"online.steps_per_round={steps}",
            f"online.prompts_per_round={prompts}", "online.samples_per_prompt=4", "online.max_new_tokens=32",
            "online.eval_every=0", "trainer.micro_batch_size=4", "trainer.grad_accum=2", "trainer.backend=deepspeed",
            "trainer.zero_stage=2", "cluster.num_workers=1", "cluster.cpus_per_worker=1", f"rollout.backend={ENGINE}",
            "rollout.cpus_per_engine=1", "rollout.batch_size=64", "optim.lr=1e-5", "run.overwrite=true"]


def persistent(root: Path, model: str, steps: int, rounds: int) -> dict:
    out = root / f"persistent_{model}_{steps}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "launch.py", "recipes/online/pmpo_builtin.yaml", f"run.output_dir={out}",
                    *common(model, steps, rounds)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows, previous_end = [], 0.0
    for r in range(rounds):
        mine = [x for x in records if r * steps < x["step"] <= (r + 1) * steps]
        end = mine[-1]["time/elapsed_s"]
        row = {"round_s": end - previous_end, "generate_s": sum(x.get("time/round_data_s", 0) for x in mine),
               "steps_s": sum(x["time/step_s"] for x in mine), "push_s": sum(x.get("time/push_s", 0) for x in mine)}
        row["other_s"] = row["round_s"] - row["generate_s"] - row["steps_s"] - row["push_s"]
        rows.append(row)
        previous_end = end
    return {"rounds": rows, "wall_s": wall, "one_time_s": wall - previous_end}


def relaunch(root: Path, model: str, steps: int, rounds: int) -> dict:
    """The earlier design (bench/relaunch_online.py run_online): a new Ray Train run per round."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from alignkit.config import load_recipe
from alignkit.data.builtin import BUILTIN_DATASETS
from alignkit.rollout.feedback import ExactAnswer
sys.path.insert(0, {str(REPO / "bench")!r})
from relaunch_online import OnlineSettings, run_online, unpaired_by_score
from alignkit.rollout.types import SamplingParams
recipe = load_recipe("recipes/online/pmpo_builtin.yaml", {common(model, steps, rounds)!r} + ["online.rounds=0",
                     "data.train=builtin:concise_arithmetic", "trainer.max_steps={steps}", "eval.generate=false"])
rows = BUILTIN_DATASETS["concise_arithmetic"][0]("train", seed=0)
settings = OnlineSettings(rounds={rounds}, prompts_per_round={2 * steps}, steps_per_round={steps},
                          sampling=SamplingParams(n=4, temperature=1.0, max_tokens=32, seed=0))
print(json.dumps(run_online(recipe, rows, ExactAnswer(), unpaired_by_score(0.5), settings, sys.argv[1])))
"""
    out = root / f"relaunch_{model}_{steps}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the relaunch loop failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for r, done in enumerate(results):
        records = [json.loads(x) for x in (out / f"round_{r}" / "train" / "metrics.jsonl").read_text().splitlines()]
        row = {"round_s": done["round_s"], "generate_s": done["generate_s"],
               "steps_s": sum(x["time/step_s"] for x in records if x["step"] > 0), "push_s": done["sync_s"]}
        row["other_s"] = row["round_s"] - row["generate_s"] - row["steps_s"] - row["push_s"]
        rows.append(row)
    return {"rounds": rows, "wall_s": wall, "one_time_s": wall - sum(x["round_s"] for x in rows)}


def mean(rows: list[dict], key: str, skip_first: bool = False) -> float:
    rows = rows[1:] if skip_first and len(rows) > 1 else rows
    return sum(r[key] for r in rows) / len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=list(MODELS))
    p.add_argument("--steps", nargs="+", type=int, default=[1, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--root", default="runs/bench_online")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                   help="rollout backend (vllm: run with .venv-vllm/bin/python; vLLM on CPU cannot run tiny-llama)")
    args = p.parse_args()
    global ENGINE
    ENGINE = args.engine
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["| model | steps/round | loop | round wall s | generate s | optimizer steps s | push s | other s | "
             "one-time start s | whole run s |", "|---" * 10 + "|"]
    ratios = []
    for model in args.models:
        for steps in args.steps:
            measured = {"relaunch": relaunch(root, model, steps, args.rounds),
                        "persistent": persistent(root, model, steps, args.rounds)}
            for name, m in measured.items():
                rs = m["rounds"]
                lines.append(f"| {model} | {steps} | {name} | {mean(rs, 'round_s'):.1f} | {mean(rs, 'generate_s'):.1f}"
                             f" | {mean(rs, 'steps_s'):.1f} | {mean(rs, 'push_s'):.2f} | {mean(rs, 'other_s'):.1f} | "
                             f"{m['one_time_s']:.1f} | {m['wall_s']:.0f} |")
            rel, per = measured["relaunch"]["rounds"], measured["persistent"]["rounds"]
            ratios.append(f"{model}, {steps} step(s)/round: round wall {mean(rel, 'round_s'):.1f} s -> "
                          f"{mean(per, 'round_s'):.1f} s (x{mean(rel, 'round_s') / mean(per, 'round_s'):.2f}); "
                          f"overhead {mean(rel, 'other_s'):.1f} s -> {max(mean(per, 'other_s'), 0.0):.2f} s per round"
                          f" (the persistent trainer's is below the timer's resolution of its phases when it shows"
                          f" 0.00); whole run "
                          f"{measured['relaunch']['wall_s']:.0f} s -> {measured['persistent']['wall_s']:.0f} s")
            print(lines[-2], lines[-1], ratios[-1], sep="\n", flush=True)
    text = (f"# Online: persistent trainer vs relaunch per round ({ENGINE} engine)\n\n"
            "Means over rounds (python bench/online.py "
            + " ".join(sys.argv[1:]) + ").\n\n" + "\n".join(lines) + "\n\n"
            + "\n".join(f"- {r}" for r in ratios) + "\n")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path(f"bench/results/online{'_vllm' if ENGINE == 'vllm' else ''}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
