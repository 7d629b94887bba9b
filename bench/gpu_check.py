"""The training-side GPU check, sized for one lent H200 (no Ray, DeepSpeed or vLLM there; nothing downloadable):
the engine runs in-process (torch backend) on random-initialised models. Run through bench/gpu_check.sh.

1. placement: every objective family trains 2 steps with cluster.use_gpu on tiny-llama (DPO, NPO+RT, PMPO with
   its live reference, the causal RM, SFT, RMU's hidden states), and the fp32 losses equal the CPU's (1e-4);
2. one online round trip: an HF engine on the GPU generates, the verifier scores, PMPO trains, the weights are pushed,
   and the engine's log-probs of a fixed completion equal the trainer's after the push (1e-4);
3. bf16: DPO with trainer.precision bf16 (autocast) and with model.dtype bfloat16, finite losses;
4. throughput: DPO steps (precomputed reference) on a ~1B Llama-shaped model (random weights, bf16 weights and
   AdamW, SDPA/FlashAttention-2) - tokens/s and MFU against the H200's dense bf16 peak (989 TFLOP/s, data sheet).

    python bench/gpu_check.py [--out DIR] [--device cpu --small]   # --small: a CPU dry run of the same code

Prints one line per check and writes DIR/gpu_check.json."""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s (NVIDIA H200 SXM data sheet)
FAMILIES = {"dpo": ("pairs", {}), "npo_rt": ("forget", {}), "pmpo": ("unpaired", {"beta": 0.5}),
            "causal_rm": ("reward_pairs", {}), "sft": ("sft", {}), "rmu": ("forget", {"layer": 1, "steering": 2.0})}
DATA = {
    "pairs": {"train": "builtin:concise_arithmetic"}, "unpaired": {"train": "builtin:concise_arithmetic"},
    "sft": {"train": "builtin:concise_arithmetic"}, "reward_pairs": {"train": "builtin:spurious_length"},
    "forget": {"train": "builtin:fictitious_authors", "train_split": "forget05", "retain": "builtin:fictitious_authors",
               "retain_split": "retain95", "retain_size": 8},
}


def recipe(out: Path, name: str, use_gpu: bool, steps: int = 2, **sections):
    from alignkit.config import recipe_from_dict

    kind, params = FAMILIES.get(name, ("pairs", {}))
    base = {"run": {"output_dir": str(out)}, "model": {"path": "builtin:tiny-llama"},
            "data": {**DATA[kind], "train_size": 8, "max_length": 64, "max_prompt_length": 40},
            "objective": {"name": name, **params}, "optim": {"lr": 1e-3},
            "trainer": {"backend": "torch", "max_steps": steps, "micro_batch_size": 2, "progress_bar": False},
            "cluster": {"use_gpu": use_gpu}, "eval": {"generate": False}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return recipe_from_dict(base)


def losses_of(out: Path) -> list[float]:
    return [r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r]


def train_recipe(r, model=None) -> list[float]:
    from alignkit.engine.loop import TrainData, train
    from alignkit.pipelines.preference import prepare_data

    encoded, _ = prepare_data(r)
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    train(r, data, r.run.output_dir, model=model)
    return losses_of(Path(r.run.output_dir))


def check_placement(tmp: Path, gpu: bool) -> dict:
    out = {}
    for name in FAMILIES:
        start = time.perf_counter()
        on_device = train_recipe(recipe(tmp / f"{name}-dev", name, use_gpu=gpu))
        on_cpu = train_recipe(recipe(tmp / f"{name}-cpu", name, use_gpu=False))
        diff = max(abs(a - b) for a, b in zip(on_device, on_cpu))
        out[name] = {"device_losses": on_device, "cpu_losses": on_cpu, "max_abs_diff": diff, "ok": diff <= 1e-4,
                     "seconds": round(time.perf_counter() - start, 1)}
        print(f"placement {name:10s} device {on_device} cpu {on_cpu} max|diff| {diff:.2e} "
              f"{'OK' if diff <= 1e-4 else 'FAIL'}", flush=True)
    return out


def check_online_round(tmp: Path, gpu: bool) -> dict:
    """One online round trip with the engine in this process, then engine log-probs vs the trainer's."""
    from alignkit.data.encode import EncodeSettings
    from alignkit.engine.loop import RunHooks, TrainData, train
    from alignkit.engine.sources import OnlineSource
    from alignkit.kinds import encode_rows
    from alignkit.models.loading import load_tokenizer, resolve_model_path
    from alignkit.models.logps import forward_batch
    from alignkit.pipelines.online import validate
    from alignkit.rollout.engine import InProcessClient
    from alignkit.rollout.hf import HFEngine
    from alignkit.rollout.rounds import RoundMaker

    r = recipe(tmp / "online", "pmpo", use_gpu=gpu, steps=2,
               data={"train": "", "train_size": None, "max_length": 64, "max_prompt_length": 48},
               online={"rounds": 2, "steps_per_round": 1, "prompts": "builtin:concise_arithmetic",
                       "prompts_per_round": 4, "samples_per_prompt": 4, "max_new_tokens": 8, "eval_size": 4,
                       "rows": "unpaired_by_score"})
    payload = validate(r)
    engine = HFEngine(resolve_model_path("builtin:tiny-llama"))
    d = r.data
    maker = RoundMaker(InProcessClient(engine), payload["prompt_rows"], payload["eval_rows"], "unpaired", r.online,
                       r.model.path, EncodeSettings(d.max_length, d.max_prompt_length), scorer=payload["scorer"])
    source = OnlineSource(make_rows=maker.make_rows, push=maker.push, evaluate=maker.evaluate, steps_per_round=1,
                          seed=0, micro=2, accum=1)
    captured = {}

    def keep(state):
        captured["state"] = state
        return {}

    start = time.perf_counter()
    train(r, TrainData("unpaired", [], [], engine.tokenizer.pad_token_id), r.run.output_dir,
          hooks=RunHooks(source=source, on_final_weights=keep))
    seconds = time.perf_counter() - start
    # the engine holds the last push (after the last step): its log-probs of a completion = the trained model's
    tokenizer = load_tokenizer(r.model.path)
    prompt, completion = "What is 12 + 30?", "42"
    engine_lp = sum(engine.score([prompt], [completion])[0])
    from alignkit.device import place, place_model, work_device
    from alignkit.kinds import get_kind
    from alignkit.models.loading import load_causal_lm

    device = work_device(gpu)
    model = place_model(load_causal_lm(r.model.path), device)
    model.load_state_dict(captured["state"], strict=False)
    encoded, _ = encode_rows(tokenizer, [{"prompt": prompt, "completion": completion}], "sft",
                             EncodeSettings(d.max_length, d.max_prompt_length))
    batch = place(get_kind("sft").collate([{**encoded[0], "index": 0}], tokenizer.pad_token_id), device)
    with torch.no_grad():
        trainer_lp = float(forward_batch(model, batch, contextlib.nullcontext())["seq_logps"][0])
    records = [json.loads(x) for x in (Path(r.run.output_dir) / "metrics.jsonl").read_text().splitlines()]
    diff = abs(engine_lp - trainer_lp)
    result = {"seconds": round(seconds, 1), "engine_logp": engine_lp, "trainer_logp": trainer_lp, "diff": diff,
              "ok": diff <= 1e-4, "rounds": [r.get("online/round") for r in records if "online/round" in r],
              "pushes": [r.get("online/weights_version") for r in records if "online/weights_version" in r]}
    print(f"online round trip on {device}: rounds {result['rounds']} pushes {result['pushes']} in {seconds:.1f} s; "
          f"engine log p {engine_lp:.6f} vs trainer {trainer_lp:.6f} (|diff| {diff:.1e}) "
          f"{'OK' if result['ok'] else 'FAIL'}", flush=True)
    return result


def check_bf16(tmp: Path, gpu: bool) -> dict:
    out = {}
    for label, sections in (("autocast", {"trainer": {"precision": "bf16"}}),
                            ("bf16 weights", {"model": {"dtype": "bfloat16"}})):
        losses = train_recipe(recipe(tmp / label.replace(" ", "_"), "dpo", use_gpu=gpu, steps=3, **sections))
        ok = all(torch.isfinite(torch.tensor(x)) for x in losses)
        out[label] = {"losses": losses, "ok": ok}
        print(f"bf16 {label}: losses {losses} {'OK' if ok else 'FAIL'}", flush=True)
    return out


def check_throughput(tmp: Path, device: str, small: bool, steps: int) -> dict:
    """DPO on a Llama-shaped model with random weights: tokens/s and MFU (PaLM's 6N + 12·L·d·T FLOPs per token,
    with the LM head counted at label positions only, which is all alignkit computes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkit.data.encode import EncodeSettings
    from alignkit.engine.loop import TrainData, train
    from alignkit.kinds import encode_rows
    from alignkit.models.loading import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny-llama")
    if small:
        shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)
        seq, micro = 256, 2
    else:  # TinyLlama-1.1B's shape with SmolLM2's vocabulary: 1.1 B parameters
        shape = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4)
        seq, micro = 2048, 4  # 16 sequences of 2048 tokens per step: about 60 GiB of activations
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=seq, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rnd = random.Random(0)

    def text(n):
        return " ".join(rnd.choice(words) for _ in range(n))

    # prompt 64 words, answers long enough to fill max_length: every sequence is `seq` tokens
    rows = [{"prompt": text(64), "chosen": text(seq), "rejected": text(seq)} for _ in range(micro * (steps + 3))]
    settings = EncodeSettings(seq, 128, "keep_end", True)
    encoded, _ = encode_rows(tokenizer, rows, "pairs", settings)
    for i, e in enumerate(encoded):
        e["index"] = i
    from alignkit.config import recipe_from_dict

    r = recipe_from_dict({
        "run": {"output_dir": str(tmp / "mfu")}, "model": {"path": "builtin:tiny-llama", "dtype": "bfloat16"},
        "data": {"train": "builtin:concise_arithmetic", "max_length": seq, "max_prompt_length": 128},
        "objective": {"name": "dpo", "beta": 0.1}, "optim": {"lr": 1e-6},
        "trainer": {"backend": "torch", "max_steps": steps + 3, "micro_batch_size": micro, "progress_bar": False},
        "cluster": {"use_gpu": device != "cpu"}, "eval": {"generate": False}})
    start = time.perf_counter()
    train(r, TrainData("pairs", encoded, [], tokenizer.pad_token_id), r.run.output_dir, model=model)
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (tmp / "mfu" / "metrics.jsonl").read_text().splitlines()][3:]  # 3 warm-up
    step_s = sum(x["time/step_s"] for x in records) / len(records)
    tokens = sum(len(e["prompt_ids"]) * 2 + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in encoded[:micro])
    labels = sum(len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in encoded[:micro])
    n_body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    n_head = model.lm_head.weight.numel()
    d, L = config.hidden_size, config.num_hidden_layers
    per_seq = tokens / (2 * micro)
    flops = 6 * n_body * tokens + 6 * n_head * labels + 12 * L * d * per_seq * tokens
    peak = H200_BF16_PEAK if device != "cpu" else float("nan")
    result = {"params": n_body + n_head + model.model.embed_tokens.weight.numel(), "seq_len": per_seq,
              "micro_batch_pairs": micro, "tokens_per_step": tokens, "step_s": step_s, "tokens_per_s": tokens / step_s,
              "tflops": flops / step_s / 1e12, "mfu": flops / step_s / peak, "wall_s": round(wall, 1),
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None,
              "attn": model.config._attn_implementation}
    print(f"throughput: DPO on {result['params'] / 1e9:.2f} B params, {micro} pairs x {per_seq:.0f} tokens per step, "
          f"{step_s:.3f} s/step, {result['tokens_per_s']:.0f} tokens/s, {result['tflops']:.0f} TFLOP/s, MFU "
          f"{result['mfu']:.1%} (target >= 40%), attention {result['attn']}, peak memory "
          f"{result['peak_memory_gb'] or 0:.1f} GiB", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu_check")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--small", action="store_true", help="a small model for the throughput step (dry run)")
    parser.add_argument("--steps", type=int, default=10, help="measured throughput steps (after 3 warm-up)")
    parser.add_argument("--only", nargs="*", default=["placement", "online", "bf16", "throughput"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    results = {"torch": torch.__version__, "transformers": transformers.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(json.dumps(results), flush=True)
    gpu = args.device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checks = {"placement": lambda: check_placement(tmp, gpu), "online": lambda: check_online_round(tmp, gpu),
                  "bf16": lambda: check_bf16(tmp, gpu),
                  "throughput": lambda: check_throughput(tmp, args.device, args.small, args.steps)}
        for name in args.only:
            start = time.perf_counter()
            try:
                results[name] = checks[name]()
            except Exception as exc:  # report and go on: one failing check must not hide the others
                import traceback

                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"{name}: ERROR {type(exc).__name__}: {exc}", flush=True)
            print(f"({name}: {time.perf_counter() - start:.1f} s)", flush=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
