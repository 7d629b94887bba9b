"""One online round's data, made on trainer rank 0: draw the next prompts, generate `samples_per_prompt` completions
with the rollout engines, score them with the feedback provider, build training rows of the objective's record kind,
encode them. Also the held-out evaluation (greedy generations scored by the same provider, and by the prompt set's
behavioural checker when it has one) and the weight push. engine/sources.py OnlineSource calls these."""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field

from alignkit.data.encode import EncodeSettings
from alignkit.errors import DataError
from alignkit.kinds import encode_rows
from alignkit.rollout.builders import make_prompt_maker, make_row_builder
from alignkit.rollout.feedback import make_provider
from alignkit.rollout.types import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class RoundMaker:
    client: object  # rollout/engine.py EngineClient
    prompt_rows: list[dict]
    eval_rows: list[dict]
    kind: str  # the objective's record kind
    online: object  # the recipe's OnlineConfig
    model_path: str  # for the tokenizer
    settings: EncodeSettings
    seed: int = 0
    scorer: object = None  # the prompt set's behavioural checker (data/builtin.py), or None
    colocate: bool = False  # engines on the trainer's GPUs: asleep while the trainer trains, awake to take weights
    rows_dir: object = None  # where each generation's training rows are written as JSONL (rank 0), or None
    _asleep: bool = field(default=False, repr=False)
    _provider: object = field(default=None, repr=False)
    _tokenizer: object = field(default=None, repr=False)

    @property
    def provider(self):
        if self._provider is None:  # built on first use, on rank 0 only (a reward model loads its weights)
            self._provider = make_provider(self.online.feedback, self.online.feedback_params, engine=self.client)
        return self._provider

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from alignkit.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    def prompts_of(self, generation: int) -> list[dict]:
        """Generation g's share of a seeded order of the prompt set: epoch after epoch, never a prompt twice
        within an epoch."""
        k, n = self.online.prompts_per_round, len(self.prompt_rows)
        picks = []
        for position in range(generation * k, (generation + 1) * k):
            epoch, offset = divmod(position, n)
            order = list(range(n))
            random.Random(f"online/{self.seed}/{epoch}").shuffle(order)
            picks.append(self.prompt_rows[order[offset]])
        return picks

    def make_rows(self, generation: int) -> tuple[list[dict], dict]:
        o = self.online
        rows = self.prompts_of(generation)
        sampling = SamplingParams(n=o.samples_per_prompt, temperature=o.temperature, top_p=o.top_p,
                                  max_tokens=o.max_new_tokens, seed=self.seed * 1_000_003 + generation)
        self._wake()  # colocated engines sleep while the trainer trains; a second generation of a round wakes them too
        prompts = make_prompt_maker(o.rows, o.rows_params, self.kind)(rows, "generate", sampling.seed)
        start = time.perf_counter()
        completions = self.client.generate(prompts, sampling)
        generate_s = time.perf_counter() - start
        start = time.perf_counter()
        feedback = self.provider.batch([rows[c.prompt_index] for c in completions], [c.text for c in completions])
        score_s = time.perf_counter() - start
        build = make_row_builder(o.rows, o.rows_params, self.kind)
        train_rows = build(rows, completions, feedback)
        if self.rows_dir is not None:
            self._write_rows(generation, train_rows)
        encoded, dropped = [], 0
        for row in train_rows:  # a generated row that cannot be encoded is dropped and counted, not fatal
            try:
                encoded += encode_rows(self.tokenizer, [row], self.kind, self.settings, "online row")[0]
            except DataError as exc:
                dropped += 1
                log.warning("online generation %d: dropped a row: %s", generation, exc)
        scores = [f.score for f in feedback if f.score is not None]
        tokens = sum(len(c.token_ids) for c in completions)
        metrics = {"online/completions": len(completions), "online/scored": len(scores),
                   "online/generated_tokens": tokens, "online/generated_tokens_per_s": tokens / max(generate_s, 1e-9),
                   "online/dropped_rows": dropped, "time/generate_s": generate_s, "time/score_s": score_s}
        if scores:
            metrics["online/mean_score"] = sum(scores) / len(scores)
        log.info("online generation %d: %d prompts x %d samples, mean score %s, %d training rows; generate %.1f s, "
                 "score %.1f s", generation, len(rows), o.samples_per_prompt, metrics.get("online/mean_score"),
                 len(encoded), generate_s, score_s)
        if self.colocate:  # (an LLM judge scored with the engines above; now the trainer needs their memory)
            self.client.sleep()
            self._asleep = True
        return encoded, metrics

    def _write_rows(self, generation: int, rows: list[dict]) -> None:
        """rows/generation_NNNN.jsonl: what this generation trained on, readable (an FCP run's feedback rows are
        the pool of conditions of a bootstrapping run)."""
        from pathlib import Path

        path = Path(self.rows_dir) / f"generation_{generation:04d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
        tmp.replace(path)

    def _wake(self) -> None:
        if self._asleep:
            self.client.wake()
            self._asleep = False

    def evaluate(self) -> dict:
        """Greedy generations on the held-out prompts with the engines' current (just pushed) weights."""
        rows = self.eval_rows
        self._wake()
        prompts = make_prompt_maker(self.online.rows, self.online.rows_params, self.kind)(rows, "evaluate", self.seed)
        completions = self.client.generate(prompts,
                                           SamplingParams(temperature=0.0, max_tokens=self.online.max_new_tokens))
        texts = [c.text for c in sorted(completions, key=lambda c: c.prompt_index)]
        out = {}
        scores = [f.score for f in self.provider.batch(rows, texts) if f.score is not None]
        if scores:
            out["online/eval_score"] = sum(scores) / len(scores)
        if self.scorer is not None:
            checks = [self.scorer(r, t) for r, t in zip(rows, texts)]
            for key in checks[0]:
                out[f"online/eval_{key}"] = sum(c[key] for c in checks) / len(checks)
        log.info("online held-out evaluation on %d prompts: %s", len(rows),
                 {k: round(v, 3) for k, v in out.items()})
        return out

    def push(self, state: dict) -> dict:
        self._wake()
        return self.client.update_weights(state)
