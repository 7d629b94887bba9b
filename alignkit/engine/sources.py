"""Where the training loop's batches come from: a `BatchSource` hands each worker its micro-batches of every
optimizer step.

- `StaticSource`: a fixed, encoded dataset in a deterministic stream of seeded epoch permutations; global example `k`
  of step `s` goes to worker `(k // micro_batch) % num_workers`, so shards never overlap and the position in the
  stream is `step * global_batch` (what an exact resume needs).
- `OnlineSource`: every `steps_per_round` steps a new round: rank 0 calls `make_rows(generation)` (generate with the
  rollout engines, score, build and encode rows: see pipelines/online.py), shares the rows with every rank, and the
  round's steps read them in the same sharded stream (seeded per round). After the round's last step the new weights
  go to the engines (`push`). Its state (round, rows, counters) is part of every checkpoint.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignkit.engine.dist import rank_world

log = logging.getLogger(__name__)


def stream_indices(num_examples: int, seed: int, start: int, count: int) -> list[int]:
    """Examples `start .. start+count-1` of the endless stream of seeded epoch permutations."""
    out = []
    position = start
    while len(out) < count:
        epoch, offset = divmod(position, num_examples)
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(count - len(out), num_examples - offset)
        out.extend(perm[offset:offset + take].tolist())
        position += take
    return out


def worker_micro_batches(num_examples: int, seed: int, step: int, micro: int, accum: int, rank: int,
                         world: int) -> list[list[int]]:
    """The example indices of each of this worker's micro-batches in optimizer step `step` (0-based)."""
    global_batch = micro * accum * world
    indices = stream_indices(num_examples, seed, step * global_batch, global_batch)
    return [indices[(m * world + rank) * micro:(m * world + rank + 1) * micro] for m in range(accum)]


def sharded_eval_batches(num_examples: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Every example once across workers; every worker gets the same number of batches (ZeRO-3 forwards are
    collective), padded with empty lists."""
    mine = list(range(rank, num_examples, world))
    n_batches = math.ceil(math.ceil(num_examples / world) / batch_size)
    return [mine[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


class StaticSource:
    def __init__(self, examples: list[dict], seed: int, micro: int, accum: int):
        self.examples, self.seed, self.micro, self.accum = examples, seed, micro, accum

    def micro_batches(self, step: int, rank: int, world: int) -> list[list[dict]]:
        ids = worker_micro_batches(len(self.examples), self.seed, step, self.micro, self.accum, rank, world)
        return [[self.examples[i] for i in batch] for batch in ids]

    def visited(self, steps: int, world: int) -> list[int]:
        """Indices of the examples the first `steps` steps read (their reference log-probs are precomputed)."""
        return stream_indices(len(self.examples), self.seed, 0, steps * self.micro * self.accum * world)

    def after_step(self, step: int, backend) -> dict:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict, backend, step: int) -> None:
        pass


@dataclass
class OnlineSource:
    """See the module docstring. `make_rows(generation) -> (encoded rows, metrics)` runs on rank 0 only: generation g
    takes the g-th share of the prompt order and samples with seed + g, so a resumed run that redoes a generation
    gets the same rows. `push(state_dict) -> metrics` sends the full weights to the engines (rank 0); `evaluate()
    -> metrics` scores held-out generations (rank 0), every `eval_every` rounds after the push."""
    make_rows: Callable[[int], tuple[list[dict], dict]]
    push: Callable[[dict], dict]
    evaluate: Callable[[], dict] | None
    steps_per_round: int
    seed: int
    micro: int
    accum: int
    few_rows: str = "accumulate"  # or "resample"
    max_extra_rounds: int = 4
    eval_every: int = 1
    round: int = -1  # the round whose rows are loaded
    generation: int = 0  # generations made so far (each takes prompts_per_round prompts)
    rows: list[dict] = field(default_factory=list)
    empty_rounds: int = 0
    pending: dict = field(default_factory=dict)  # the round's metrics, logged with its first step

    def _new_round(self, r: int, world: int) -> None:
        rank, _ = rank_world()
        payload = None
        if rank == 0:
            start = time.perf_counter()
            global_batch = self.micro * self.accum * world
            rows, metrics = self.make_rows(self.generation)
            self.generation += 1
            extra = 0
            # Too few rows for one global batch: generate for the next prompts too (accumulate), or, with
            # resample, only when there are none at all.
            while extra < self.max_extra_rounds and (
                    len(rows) < global_batch if self.few_rows == "accumulate" else not rows):
                more, more_metrics = self.make_rows(self.generation)
                self.generation += 1
                extra += 1
                rows += more
                metrics = _merge_round_metrics(metrics, more_metrics)
                log.info("online round %d: %d rows after %d extra generation(s) (online.few_rows: %s)", r,
                         len(rows), extra, self.few_rows)
            metrics.update({"online/round": r, "online/rows": len(rows), "online/extra_generations": extra,
                            "time/round_data_s": time.perf_counter() - start})
            payload = {"rows": rows, "metrics": metrics, "generation": self.generation}
        if world > 1:  # every rank gets rank 0's rows
            box = [payload]
            torch.distributed.broadcast_object_list(box, src=0)
            payload = box[0]
        self.rows, self.generation, self.round = payload["rows"], payload["generation"], r
        for i, row in enumerate(self.rows):
            row["index"] = i
        if not self.rows:
            self.empty_rounds += 1
            log.warning("online round %d: no training rows after %d generation(s); its %d step(s) are skipped "
                        "(%d empty round(s) so far)", r, payload["metrics"].get("online/extra_generations", 0) + 1,
                        self.steps_per_round, self.empty_rounds)
        self.pending = {**payload["metrics"], "online/empty_rounds": self.empty_rounds}

    def micro_batches(self, step: int, rank: int, world: int) -> list[list[dict]]:
        """This worker's micro-batches; [] when the round has no rows (the loop skips the step)."""
        r = step // self.steps_per_round
        if r != self.round:
            self._new_round(r, world)
        if not self.rows:
            return []
        within = step - r * self.steps_per_round
        ids = worker_micro_batches(len(self.rows), self.seed + r, within, self.micro, self.accum, rank, world)
        return [[self.rows[i] for i in batch] for batch in ids]

    def start_metrics(self) -> dict:
        """The held-out evaluation of the starting policy (rank 0; the engines hold its weights): the "before" of
        the run's curve."""
        if self.evaluate is None or rank_world()[0] != 0:
            return {}
        start = time.perf_counter()
        return {**self.evaluate(), "time/eval_s": time.perf_counter() - start}

    def round_metrics(self) -> dict:
        """The current round's generation metrics, once (logged with the round's first step)."""
        out, self.pending = self.pending, {}
        return out

    def after_step(self, step: int, backend) -> dict:
        """After the round's last step: push the weights to the engines (all ranks take part in gathering them),
        then evaluate every `eval_every` rounds."""
        if step % self.steps_per_round or not self.rows:  # an empty round changed no weight: nothing to push
            return {}
        rank, _ = rank_world()
        start = time.perf_counter()
        state = backend.state_dict_for_export()  # collective under ZeRO-3; the full weights on rank 0
        metrics = {}
        if rank == 0:
            pushed = self.push(state)
            metrics.update({"time/push_s": time.perf_counter() - start, "online/weights_version": pushed["version"]})
            r = step // self.steps_per_round - 1
            if self.evaluate is not None and self.eval_every and (r + 1) % self.eval_every == 0:
                t0 = time.perf_counter()
                metrics.update(self.evaluate())
                metrics["time/eval_s"] = time.perf_counter() - t0
        return metrics

    def state(self) -> dict:
        return {"round": self.round, "generation": self.generation, "rows": self.rows,
                "empty_rounds": self.empty_rounds}

    def load_state(self, state: dict, backend, step: int) -> None:
        """Continue with the checkpoint's rows (not regenerated). Resuming at a round boundary, the next step
        generates: the engines first get the checkpoint's weights (they may hold later ones, or the starting ones).
        Mid-round the round-end push comes before any generation (and colocated engines stay asleep)."""
        self.round, self.generation = state["round"], state["generation"]
        self.rows, self.empty_rounds = state["rows"], state["empty_rounds"]
        if step % self.steps_per_round == 0:
            weights = backend.state_dict_for_export()  # collective under ZeRO-3: every rank (all know `step`)
            if rank_world()[0] == 0:
                self.push(weights)


SUMMED = ("online/completions", "online/scored", "online/generated_tokens", "online/dropped_rows", "time/generate_s",
          "time/score_s")


def _merge_round_metrics(a: dict, b: dict) -> dict:
    """Two generations' metrics as one round's: counts and seconds add, the mean score is weighted by the scored
    completions of each, the token rate is recomputed from the sums."""
    out = {**a, **b, **{k: a.get(k, 0) + b.get(k, 0) for k in SUMMED if k in a or k in b}}
    scored = [(m["online/mean_score"], m.get("online/scored", 1)) for m in (a, b) if "online/mean_score" in m]
    if scored:
        out["online/mean_score"] = sum(s * n for s, n in scored) / max(1, sum(n for _, n in scored))
    if out.get("time/generate_s"):
        out["online/generated_tokens_per_s"] = out.get("online/generated_tokens", 0) / out["time/generate_s"]
    return out
