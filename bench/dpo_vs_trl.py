"""alignkit DPO vs TRL's DPOTrainer on the same model, data, order, batch size, sequence length and steps, in one run.

Each trainer runs in its own subprocess (clean peak-memory numbers, same 2 threads); the parent prints the ratios.
TRL runs twice: with its defaults (live reference model, gradient checkpointing on) and tuned
(precomputed reference log-probs, no gradient checkpointing). Both use fp32, as alignkit does here.

    python bench/dpo_vs_trl.py [--model builtin:smollm2-135m-instruct] [--steps 8] [--batch 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ordered_rows(n: int) -> list[dict]:
    from alignkit.data.builtin import concise_arithmetic

    return concise_arithmetic("train")[:n]


def run_alignkit(args) -> dict:
    from alignkit.config import recipe_from_dict
    from alignkit.data.encode import EncodeSettings
    from alignkit.engine.loop import TrainData, train
    from alignkit.kinds import encode_rows
    from alignkit.models.loading import load_tokenizer

    rows = ordered_rows(args.steps * args.batch)
    tokenizer = load_tokenizer(args.model)
    examples, _ = encode_rows(tokenizer, rows, "pairs", EncodeSettings(args.max_length, args.max_length // 2))
    out = Path(args.out) / "alignkit"
    recipe = recipe_from_dict({
        "run": {"output_dir": str(out)}, "model": {"path": args.model},
        "data": {"train": "builtin:concise_arithmetic", "max_length": args.max_length,
                 "max_prompt_length": args.max_length // 2},
        "objective": {"name": "dpo", "beta": 0.1}, "optim": {"lr": args.lr, "max_grad_norm": 1.0},
        "trainer": {"backend": "torch", "max_steps": args.steps, "micro_batch_size": args.batch, "progress_bar": False},
    })
    # Sequential order, so TRL (with a sequential sampler) sees the same batches.
    import alignkit.engine.sources as sources

    sources.stream_indices = lambda n, seed, start, count: [(start + i) % n for i in range(count)]
    start = time.perf_counter()
    train(recipe, TrainData("pairs", examples, [], tokenizer.pad_token_id), out)
    total = time.perf_counter() - start
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = sum(len(e["prompt_ids"]) * 2 + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
    return {"losses": [r["train/loss"] for r in records], "step_s": [r["time/step_s"] for r in records],
            "total_s": total, "tokens": tokens}


def run_trl(args, tuned: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignkit.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ordered_rows(args.steps * args.batch)]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = DPOConfig(output_dir=str(Path(args.out) / "trl"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch, learning_rate=args.lr, beta=0.1,
                       max_length=args.max_length, logging_steps=1, report_to="none", save_strategy="no",
                       bf16=False, use_cpu=True, disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0,
                       weight_decay=0.0, max_grad_norm=1.0, seed=0, dataloader_drop_last=False,
                       gradient_checkpointing=not tuned, precompute_ref_log_probs=tuned)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    class SequentialDPO(DPOTrainer):
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = SequentialDPO(model=model, ref_model=ref, args=config, train_dataset=Dataset.from_list(rows),
                            processing_class=load_tokenizer(args.model), callbacks=[StepTimer()])
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"losses": losses, "step_s": times, "total_s": total}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = run_alignkit(args) if args.which == "alignkit" else run_trl(args, tuned=args.which == "trl_tuned")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench_dpo_vs_trl")
    p.add_argument("--which", choices=["alignkit", "trl", "trl_tuned"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.which:
        return child(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {}
    for which in ("alignkit", "trl", "trl_tuned"):
        result_file = Path(args.out) / f"{which}.json"
        cmd = [sys.executable, __file__, "--which", which, "--result", str(result_file), "--model", args.model,
               "--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length),
               "--lr", str(args.lr), "--threads", str(args.threads), "--out", args.out]
        print(f"running {which} ...", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                       stdout=subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None)
        results[which] = json.loads(result_file.read_text())
    tokens = results["alignkit"]["tokens"]
    print(f"\nDPO, {args.model}, {args.steps} steps x {args.batch} pairs, max_length {args.max_length}, fp32, "
          f"{args.threads} threads, {tokens} training tokens")
    print("| trainer | steady tokens/s (steps 2..) | whole run s (incl. reference pass) | peak RSS MB | "
          "final loss |")
    print("|---|---|---|---|---|")
    steady = {}
    for which, r in results.items():
        per_step = r["step_s"][1:] or r["step_s"]
        steady[which] = tokens / args.steps / (sum(per_step) / len(per_step))
        print(f"| {which} | {steady[which]:.0f} | {r['total_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['losses'][-1]:.4f} |")
    for base in ("trl", "trl_tuned"):
        print(f"alignkit / {base}: throughput x{steady['alignkit'] / steady[base]:.2f}, whole run "
              f"x{results[base]['total_s'] / results['alignkit']['total_s']:.2f}, peak memory "
              f"x{results['alignkit']['peak_rss_mb'] / results[base]['peak_rss_mb']:.2f}")
    a, t = results["alignkit"]["losses"], results["trl"]["losses"]
    print("loss per step (alignkit vs TRL):", [f"{x:.4f}/{y:.4f}" for x, y in zip(a, t)])
    print("max |loss difference|:", f"{max(abs(x - y) for x, y in zip(a, t)):.2e}")
    (Path(args.out) / "summary.json").write_text(json.dumps({"steady_tokens_per_s": steady, "results": results}))


if __name__ == "__main__":
    main()
