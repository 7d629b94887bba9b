"""The training loop in one process (torch backend): data order and sharding, accumulation, reference modes,
metrics, export."""
import json

import pytest
import torch

from alignkit.config import recipe_from_dict
from alignkit.engine.loop import TrainData, sharded_eval_batches, stream_indices, train, worker_micro_batches


def test_sharding_covers_every_example_once_per_epoch():
    n, micro, accum, world = 24, 2, 3, 4  # global batch 24 = one epoch per step
    seen = []
    for rank in range(world):
        for batch in worker_micro_batches(n, seed=0, step=0, micro=micro, accum=accum, rank=rank, world=world):
            assert len(batch) == micro
            seen += batch
    assert sorted(seen) == list(range(n))


def test_stream_is_seeded_and_crosses_epochs():
    a = stream_indices(10, seed=3, start=0, count=25)
    assert a == stream_indices(10, seed=3, start=0, count=25)
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    assert a[:10] != a[10:20]  # a new permutation each epoch
    assert stream_indices(10, seed=3, start=7, count=5) == a[7:12]  # any position can be resumed


def test_eval_sharding_equal_batch_counts():
    parts = [sharded_eval_batches(7, 2, rank, 3) for rank in range(3)]
    assert len({len(p) for p in parts}) == 1
    assert sorted(i for p in parts for b in p for i in b) == list(range(7))


def _recipe(tmp_path, **trainer):
    return recipe_from_dict({
        "run": {"output_dir": str(tmp_path)},
        "model": {"path": "builtin:tiny-llama"},
        "data": {"train": "builtin:concise_arithmetic", "eval": "builtin:concise_arithmetic"},
        "objective": {"name": "dpo", "beta": 0.1},
        "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 4, "micro_batch_size": 2, "progress_bar": False, **trainer},
    })


@pytest.fixture(scope="module")
def tiny_data(tokenizer):
    from alignkit.data.builtin import concise_arithmetic
    from alignkit.data.encode import EncodeSettings, encode_rows

    s = EncodeSettings(max_length=96, max_prompt_length=64)
    train_rows, _ = encode_rows(tokenizer, concise_arithmetic("train")[:32], "pairs", s)
    eval_rows, _ = encode_rows(tokenizer, concise_arithmetic("test")[:8], "pairs", s)
    return TrainData("pairs", train_rows, eval_rows, tokenizer.pad_token_id)


def test_train_writes_metrics_and_final_model(tmp_path, tiny_data):
    summary = train(_recipe(tmp_path, eval_every=2), tiny_data, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["eval/loss"] == pytest.approx(0.6931, abs=1e-4)  # policy == reference at the start
    assert "eval/loss" in records[2] and "eval/loss" in records[4] and "eval/loss" not in records[1]
    assert records[-1]["train/tokens"] > 0 and records[-1]["train/lr"] == pytest.approx(1e-3)
    assert summary["eval/loss"] < 0.6931  # the preference is being learned on held-out pairs
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (tmp_path / "final" / "tokenizer_config.json").exists()


def test_grad_accum_equals_bigger_micro_batch(tmp_path, tiny_data):
    """2 micro-batches of 2 with accumulation give the same update as one batch of 4 (mean losses, same examples)."""
    a = train(_recipe(tmp_path / "a", micro_batch_size=4, grad_accum=1, max_steps=2), tiny_data, tmp_path / "a")
    b = train(_recipe(tmp_path / "b", micro_batch_size=2, grad_accum=2, max_steps=2), tiny_data, tmp_path / "b")
    assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-5)
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=1e-4)


def test_live_reference_matches_precompute(tmp_path, tiny_data):
    pre = train(_recipe(tmp_path / "p", max_steps=2), tiny_data, tmp_path / "p")
    recipe = _recipe(tmp_path / "l", max_steps=2)
    recipe.reference.mode = "live"
    live = train(recipe, tiny_data, tmp_path / "l")
    assert pre["train/loss"] == pytest.approx(live["train/loss"], abs=1e-5)


def test_non_finite_loss_stops_with_clear_error(tmp_path, tiny_data):
    from alignkit.errors import AlignkitError

    recipe = _recipe(tmp_path, max_steps=3)
    recipe.optim.lr = 1e30
    recipe.optim.max_grad_norm = 0.0
    with pytest.raises(AlignkitError, match="non-finite loss .* at step"):
        train(recipe, tiny_data, tmp_path)


def test_pmpo_live_reference_end_to_end(tmp_path, tokenizer):
    """PMPO through the loop: unpaired data from pairs, live reference, exact KL starts at 0 and grows."""
    from alignkit.data.encode import EncodeSettings, encode_rows
    from alignkit.data.sources import load_records

    s = EncodeSettings(max_length=96, max_prompt_length=64)
    train_rows, _ = encode_rows(tokenizer, load_records("builtin:concise_arithmetic", "train", "unpaired",
                                                        limit=32).rows, "unpaired", s)
    eval_rows, _ = encode_rows(tokenizer, load_records("builtin:concise_arithmetic", "test", "unpaired",
                                                       limit=8).rows, "unpaired", s)
    data = TrainData("unpaired", train_rows, eval_rows, tokenizer.pad_token_id)
    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path)}, "model": {"path": "builtin:tiny-llama"},
        "data": {"train": "builtin:concise_arithmetic"}, "objective": {"name": "pmpo", "beta": 0.5},
        "optim": {"lr": 1e-3}, "trainer": {"backend": "torch", "max_steps": 3, "micro_batch_size": 4,
                                           "progress_bar": False}})
    summary = train(recipe, data, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["eval/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at the start
    assert summary["eval/kl"] > 0
    margin = lambda r: r["eval/logps/accepted"] - r["eval/logps/rejected"]  # noqa: E731
    assert margin(summary) > margin(records[0]) + 1.0
