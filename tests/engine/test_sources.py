"""Batch sources: the online source's rounds (few rows, empty rounds, sharding across ranks, state for resume)."""
import pytest
import torch

import alignkit.engine.sources as sources
from alignkit.engine.sources import OnlineSource


def _rows(n, tag=0):
    return [{"prompt_ids": [1], "completion_ids": [2], "tag": (tag, i)} for i in range(n)]


def _source(per_generation, **kw):
    calls = []

    def make_rows(generation):
        calls.append(generation)
        n = per_generation(generation)
        return _rows(n, generation), {"online/completions": 4, "online/mean_score": 0.5, "time/generate_s": 1.0}

    settings = dict(make_rows=make_rows, push=lambda state: {"version": 1}, evaluate=None, steps_per_round=2,
                    seed=0, micro=2, accum=1)
    return OnlineSource(**{**settings, **kw}), calls


def test_enough_rows_one_generation_per_round():
    source, calls = _source(lambda g: 8)
    for step in range(4):
        assert [len(b) for b in source.micro_batches(step, 0, 1)] == [2]
    assert calls == [0, 1]  # rounds 0 and 1, one generation each
    assert source.round == 1


def test_few_rows_accumulate_until_a_global_batch():
    source, calls = _source(lambda g: 1, few_rows="accumulate")
    batches = source.micro_batches(0, 0, 1)
    assert calls == [0, 1]  # 1 row < global batch 2: the next prompts are generated too
    assert [len(b) for b in batches] == [2]
    metrics = source.round_metrics()
    assert metrics["online/extra_generations"] == 1 and metrics["online/rows"] == 2
    assert metrics["online/completions"] == 8 and metrics["time/generate_s"] == 2.0  # both generations counted


def test_few_rows_resample_repeats_them():
    source, calls = _source(lambda g: 1, few_rows="resample")
    batches = source.micro_batches(0, 0, 1)
    assert calls == [0] and [e["tag"] for e in batches[0]] == [(0, 0), (0, 0)]


def test_empty_rounds_are_counted_and_skipped_not_fatal():
    source, calls = _source(lambda g: 0, max_extra_rounds=2)
    assert source.micro_batches(0, 0, 1) == []
    assert calls == [0, 1, 2]  # the round and its 2 extra generations
    assert source.round_metrics()["online/empty_rounds"] == 1
    assert source.micro_batches(1, 0, 1) == []  # the round's other step: nothing generated again
    assert calls == [0, 1, 2]


def test_each_rank_gets_its_share_without_duplicates_or_losses(monkeypatch):
    """Two ranks (rank 0's rows broadcast to both): every step's global batch is the round's rows, each once."""
    world, micro, accum = 2, 2, 2
    sent = []

    def broadcast(box, src):  # rank 0 (run first) sends its payloads; rank 1 receives them in order
        if box[0] is not None:
            sent.append(box[0])
        else:
            box[0] = sent.pop(0)

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    seen = {}
    for rank in range(world):
        monkeypatch.setattr(sources, "rank_world", lambda r=rank: (r, world))
        source, calls = _source(lambda g: 8, micro=micro, accum=accum)
        seen[rank] = [[e["tag"] for b in source.micro_batches(step, rank, world) for e in b] for step in range(2)]
        assert len(calls) == (1 if rank == 0 else 0)  # only rank 0 generates
    for step in range(2):
        together = seen[0][step] + seen[1][step]
        assert len(together) == len(set(together)) == 8  # global batch 8 = all rows of the round, once
    assert set(seen[0][0] + seen[1][0]) == set(seen[0][1] + seen[1][1])


class _Backend:
    def state_dict_for_export(self):
        return {"w": torch.zeros(1)}


def test_state_round_trip_continues_mid_round():
    source, calls = _source(lambda g: 8)
    first = [source.micro_batches(s, 0, 1) for s in range(3)]  # round 0, then round 1's first step
    state = source.state()
    resumed, calls_after = _source(lambda g: 99)  # would make other rows: must not be called mid-round
    pushed = []
    resumed.push = lambda weights: pushed.append(weights) or {"version": 1}
    resumed.load_state(state, _Backend(), 3)
    assert not pushed  # mid-round: the round-end push comes before the engines generate again
    assert resumed.micro_batches(3, 0, 1) == source.micro_batches(3, 0, 1)
    assert calls_after == [] and first[2]
    assert resumed.generation == 2


def test_resume_at_a_round_boundary_gives_the_engines_the_checkpoints_weights():
    source, _ = _source(lambda g: 8)
    for step in range(2):  # round 0 done; the next step generates round 1
        source.micro_batches(step, 0, 1)
    resumed, _ = _source(lambda g: 8)
    pushed = []
    resumed.push = lambda weights: pushed.append(weights) or {"version": 1}
    resumed.load_state(source.state(), _Backend(), 2)
    assert len(pushed) == 1


def test_an_empty_round_pushes_nothing():
    source, _ = _source(lambda g: 0, max_extra_rounds=0)
    pushed = []
    source.push = lambda weights: pushed.append(weights) or {"version": 1}
    source.micro_batches(0, 0, 1)
    assert source.after_step(2, _Backend()) == {} and not pushed


def test_merged_generations_add_counts_and_recompute_rates():
    from alignkit.engine.sources import _merge_round_metrics

    a = {"online/completions": 4, "online/scored": 4, "online/mean_score": 1.0, "online/generated_tokens": 40,
         "time/generate_s": 2.0, "online/generated_tokens_per_s": 20.0, "online/dropped_rows": 1}
    b = {"online/completions": 4, "online/scored": 2, "online/mean_score": 0.0, "online/generated_tokens": 20,
         "time/generate_s": 2.0, "online/generated_tokens_per_s": 10.0, "online/dropped_rows": 2}
    m = _merge_round_metrics(a, b)
    assert m["online/completions"] == 8 and m["online/dropped_rows"] == 3
    assert m["online/mean_score"] == pytest.approx(4 / 6)  # weighted by the scored completions
    assert m["online/generated_tokens_per_s"] == pytest.approx(15.0)  # 60 tokens in 4 s, not 20 + 10


@pytest.mark.parametrize("step,pushes", [(1, False), (2, True)])
def test_weights_are_pushed_after_the_rounds_last_step(step, pushes):
    source, _ = _source(lambda g: 8)
    pushed = []
    source.push = lambda weights: pushed.append(weights) or {"version": len(pushed)}

    source.micro_batches(0, 0, 1)
    metrics = source.after_step(step, _Backend())
    assert bool(pushed) == pushes and ("time/push_s" in metrics) == pushes
