"""What every rollout engine takes and returns."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)  # the text ends before the first stop string
    seed: int | None = None  # same seed, same prompts, same weights -> same completions

    def __post_init__(self):
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (got n={self.n}, max_tokens={self.max_tokens})")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be >= 0 and top_p in (0, 1] (got {self.temperature}, {self.top_p})")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass
class Completion:
    prompt_index: int  # which prompt of the call
    sample_index: int  # which of its n samples
    text: str  # decoded, special tokens and anything from the first stop string on removed
    token_ids: list[int]  # generated tokens (EOS included when the model ended the turn)
    logprobs: list[float]  # per generated token, under the model's own distribution (before temperature / top-p)
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens reached)

    @property
    def logprob_sum(self) -> float:
        return float(sum(self.logprobs))
