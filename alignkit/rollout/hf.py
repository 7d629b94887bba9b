"""The Hugging Face rollout engine: batched `generate` with a KV cache, for machines without a vLLM build and for fast
tests. Same interface and outputs as the vLLM engine (engine.py)."""
from __future__ import annotations

import logging
import time

import torch

from alignkit.data.encode import EncodeSettings, collate_sft, encode_sft, prompt_token_ids
from alignkit.device import place, place_model, work_device
from alignkit.rollout.types import Completion, SamplingParams

log = logging.getLogger(__name__)


class HFEngine:
    backend = "hf"
    supports_sleep = False

    def __init__(self, model_path: str, dtype: str = "float32", batch_size: int = 16, threads: int | None = None,
                 max_length: int = 2048):
        from alignkit.models.loading import load_causal_lm, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        self.model_path, self.batch_size = model_path, batch_size
        self.device = work_device()  # the GPU this engine actor reserved (rollout.gpus_per_engine), else the CPU
        self.model = place_model(load_causal_lm(model_path, dtype, on_cuda=self.device.type == "cuda").eval(),
                                 self.device)
        self.model.config.use_cache = True
        self.tokenizer = load_tokenizer(model_path)
        self.settings = EncodeSettings(max_length, max_length // 2)
        self.version = 0
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.tokenizer.eos_token_id)
        self.init_seconds = time.perf_counter() - start

    # ------------------------------------------------------------------------------------------------ generate
    def generate(self, prompts: list, sampling: SamplingParams) -> list[Completion]:
        """n completions per prompt: a string, a chat message list rendered with the tokenizer's template, or
        `{"prompt_ids": [...]}` (token ids as given: a partial answer is continued, not closed)."""
        ids = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        jobs = [(i, k) for i in range(len(ids)) for k in range(sampling.n)]
        out: list[Completion] = []
        for chunk_index, start in enumerate(range(0, len(jobs), self.batch_size)):
            chunk = jobs[start:start + self.batch_size]
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed + chunk_index)
            out += self._generate_chunk([ids[i] for i, _ in chunk], chunk, sampling)
        return out

    def _generate_chunk(self, prompts: list[list[int]], jobs: list[tuple[int, int]], s: SamplingParams
                        ) -> list[Completion]:
        tok = self.tokenizer
        width = max(len(p) for p in prompts)  # left padding: every row's next token is at the same position
        enc = place({"input_ids": torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts]),
                     "attention_mask": torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])},
                    self.device)
        sample = s.temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=s.max_tokens, pad_token_id=tok.pad_token_id,
                      return_dict_in_generate=True, output_logits=True, top_k=None,
                      temperature=s.temperature if sample else None, top_p=s.top_p if sample else None)
        if s.stop:
            kwargs["stopping_criteria"] = [_StopOnText(tok, enc["input_ids"].shape[1], s.stop)]
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        generated = out.sequences[:, enc["input_ids"].shape[1]:]
        # raw logits of every step (before temperature / top-p): the model's own log-probs, as vLLM reports them
        logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)
        picked = logps.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        return [self._completion(generated[row].tolist(), picked[row].tolist(), job, s)
                for row, job in enumerate(jobs)]

    def _completion(self, ids: list[int], logprobs: list[float], job: tuple[int, int], s: SamplingParams
                    ) -> Completion:
        end = next((k + 1 for k, t in enumerate(ids) if t in self.eos_ids), None)
        finish = "stop" if end is not None else "length"
        ids = ids[:end] if end is not None else ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.find(x) for x in s.stop if x in text), default=-1)
        if cut >= 0:
            # keep the tokens up to the one that completed the stop string (the text ends before it)
            k = next(k for k in range(1, len(ids) + 1)
                     if any(x in self.tokenizer.decode(ids[:k], skip_special_tokens=True) for x in s.stop))
            ids, text, finish = ids[:k], text[:cut], "stop"
        return Completion(job[0], job[1], text, ids, logprobs[:len(ids)], finish)

    # --------------------------------------------------------------------------------------------------- score
    def score(self, prompts: list, completions: list[str]) -> list[list[float]]:
        """Per-token log-probs of fixed completions, encoded exactly as training encodes them (chat template, end of
        turn) — equal to the trainer's `sequence_logps` for the same weights."""
        from alignkit.models.logps import forward_token_logps

        rows = [{"prompt": p, "completion": [{"role": "assistant", "content": c}] if isinstance(p, list) else c}
                for p, c in zip(prompts, completions)]
        encoded = [{**encode_sft(self.tokenizer, r, self.settings), "index": i} for i, r in enumerate(rows)]
        result = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                batch = place(collate_sft(encoded[start:start + self.batch_size], self.tokenizer.pad_token_id),
                              self.device)
                lp, mask = forward_token_logps(self.model, batch["input_ids"], batch["attention_mask"],
                                               batch["labels"])
                result += [lp[b][mask[b]].tolist() for b in range(lp.shape[0])]
        return result

    # ------------------------------------------------------------------------------------------------- weights
    def update_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """Load a full state dict (from the trainer, through the Ray object store). Tied weights may be absent."""
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")} if self.model.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise ValueError(f"update_weights: state dict does not match the engine's model (missing "
                             f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
        self.version += 1
        return self.version

    def sleep(self) -> None:
        raise NotImplementedError("the hf engine cannot sleep; use rollout.backend: vllm for colocated sleep/wake")

    def wake(self) -> None:
        raise NotImplementedError("the hf engine cannot sleep; use rollout.backend: vllm for colocated sleep/wake")

    def health(self) -> dict:
        return {"backend": self.backend, "model": self.model_path, "weights_version": self.version, "ok": True,
                "init_seconds": round(self.init_seconds, 2)}


class _StopOnText:
    """Stops a row once its decoded continuation contains a stop string (plain text matching, as vLLM does; HF's own
    `stop_strings` matches on token pieces and can fire early on strings with spaces)."""

    def __init__(self, tokenizer, prompt_length: int, stop: list[str]):
        self.tokenizer, self.prompt_length, self.stop = tokenizer, prompt_length, stop

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return place(torch.tensor([any(x in t for x in self.stop) for t in texts]), input_ids.device)
