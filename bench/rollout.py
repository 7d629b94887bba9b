"""Rollout engines side by side in one run: generated tokens/s of the vLLM and HF engines at several batch sizes,
and weight-sync time (a full SmolLM2-135M state dict into the engine), on SmolLM2-135M-Instruct, fp32.

    .venv-vllm/bin/python bench/rollout.py [--batch-sizes 1 4 16] [--max-tokens 64] [--backends vllm hf]
                                           [--sync-repeats 3] [--dtype float32] [--gpu-memory-utilization 0.2]

Needs the vLLM environment (`make install-vllm`); with --backends hf it runs in any environment. Each engine runs
in this process (no Ray), one after the other, greedy, on prompts that ask for long answers; tokens/s = generated
tokens / wall time of the generate call (after one warm-up call). Then, with vllm among the backends, one vLLM
engine as a Ray actor (RolloutPool) takes the same weights from this process --sync-repeats times each way:
through the transfer group (rollout.weight_sync: collective; gloo on CPU, NCCL when the engine is on a GPU) and
through the Ray object store; the median of each is reported.
"""
from __future__ import annotations

import argparse
import gc
import json
import time

PROMPT = "Write a detailed story about a lighthouse keeper who finds a message in a bottle. Story {i}:"


def measure(engine, batch_sizes: list[int], max_tokens: int) -> dict:
    from alignkit.rollout.types import SamplingParams

    rows = {}
    engine.generate([PROMPT.format(i=0)], SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
    for b in batch_sizes:
        prompts = [[{"role": "user", "content": PROMPT.format(i=i)}] for i in range(b)]
        start = time.perf_counter()
        out = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens))
        seconds = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for c in out)
        rows[b] = {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}
        print(f"  batch {b}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s", flush=True)
    return rows


def pool_sync(path: str, weights: dict, args) -> dict:
    """Median seconds of a full push into one vLLM engine actor, collective vs object store, same weights."""
    import statistics

    import ray
    import torch

    from alignkit.config.schema import RolloutConfig
    from alignkit.rollout.engine import RolloutPool

    gpu = torch.cuda.is_available()
    ray.init(num_cpus=2, num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=False)
    try:
        pool = RolloutPool(path, RolloutConfig(backend="vllm", num_engines=1, cpus_per_engine=1,
                                               gpus_per_engine=1 if gpu else 0, weight_sync="collective",
                                               gpu_memory_utilization=args.gpu_memory_utilization), args.dtype)
        if gpu:
            weights = {k: v.cuda() for k, v in weights.items()}
        out = {}
        for via in ("collective", "object_store"):
            times = [pool.update_weights(weights, via=via)["seconds"] for _ in range(args.sync_repeats)]
            out[via] = round(statistics.median(times), 3)
            print(f"  engine actor, weights via {via}: median {out[via]:.2f} s of {times}", flush=True)
        pool.shutdown()
        return {"seconds": out, "megabytes": round(sum(t.numel() * t.element_size() for t in weights.values()) / 1e6)}
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--backends", nargs="+", default=["vllm", "hf"])
    p.add_argument("--sync-repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    p.add_argument("--out", default="runs/bench_rollout.json")
    args = p.parse_args()

    from alignkit.models.loading import load_causal_lm, resolve_model_path
    from alignkit.rollout.engine import make_engine

    path = resolve_model_path(args.model)
    weights = load_causal_lm(path, args.dtype).state_dict()
    results = {}
    for backend in args.backends:
        print(f"== {backend}", flush=True)
        start = time.perf_counter()
        engine = make_engine(backend, path, args.dtype, batch_size=max(args.batch_sizes),
                             gpu_memory_utilization=args.gpu_memory_utilization)
        init = time.perf_counter() - start
        rows = measure(engine, args.batch_sizes, args.max_tokens)
        start = time.perf_counter()
        engine.update_weights(weights)
        sync = time.perf_counter() - start
        print(f"  init {init:.1f} s, weight sync {sync:.2f} s", flush=True)
        results[backend] = {"init_s": round(init, 1), "weight_sync_s": round(sync, 3), "generate": rows}
        del engine
        gc.collect()
    if "vllm" in args.backends and args.sync_repeats:
        results["pool_sync"] = pool_sync(path, weights, args)
    lines = ["| batch | " + " | ".join(f"{b} tok/s" for b in args.backends) + " | ratio |",
             "|---" * (len(args.backends) + 2) + "|"]
    for b in args.batch_sizes:
        speeds = [results[k]["generate"][b]["tokens_per_s"] for k in args.backends]
        ratio = f"{speeds[0] / speeds[1]:.2f}" if len(speeds) == 2 else "—"
        lines.append(f"| {b} | " + " | ".join(str(x) for x in speeds) + f" | {ratio} |")
    print("\n".join(lines))
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":  # vLLM's workers re-import the main module
    main()
