"""The cached datasets encoder (pipelines/data_cache.py) and its reader (data/encoded_rows.py): the same records in
the same order as the in-memory path, a second run served from the cache, any input change re-encoded, bad rows
named or skipped, and sharding unchanged when workers read from the files."""
import json
import pickle
from functools import partial

import pytest

from alignkit.data.encode import EncodeSettings
from alignkit.data.encoded_rows import EncodedRows
from alignkit.engine.sources import StaticSource
from alignkit.errors import DataError
from alignkit.kinds import encode_rows, load_records
from alignkit.models.loading import load_tokenizer, resolve_model_path
from alignkit.pipelines import data_cache
from alignkit.pipelines.data_cache import encode_source

S = EncodeSettings(96, 64)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("builtin:tiny-llama"), resolve_model_path("builtin:tiny-llama")


def in_memory(tok, spec, kind, split="train", **kw):
    loaded = load_records(spec, split, kind, **kw)
    return encode_rows(tok[0], loaded.rows, kind, S, loaded.origin)[0], loaded.skipped


def cached(tok, tmp_path, spec, kind, split="train", **kw):
    return encode_source(tok[0], tok[1], spec, split, kind, S, root=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("spec, kind, kw", [
    ("builtin:concise_arithmetic", "pairs", {}),
    ("builtin:concise_arithmetic", "unpaired", {"keep_labels": (False,)}),  # pairs expand to unpaired; one side kept
    ("builtin:chain_arith", "sft", {"limit": 7}),
    ("builtin:spurious_length", "reward_pairs", {"limit": 40}),
    ("builtin:fictitious_authors", "forget", {"limit": 30, "split": "forget05"}),
])
def test_same_examples_as_the_in_memory_path(tok, tmp_path, spec, kind, kw):
    expected, _ = in_memory(tok, spec, kind, **kw)
    rows, stats = cached(tok, tmp_path, spec, kind, **kw)
    assert len(rows) == len(expected) == stats["rows"] and not stats["cache_hit"]
    assert [rows[i] for i in range(len(rows))] == expected
    assert rows[-1] == expected[-1] and rows[1:3] == expected[1:3]


def test_second_run_is_a_cache_hit_and_any_input_change_re_encodes(tok, tmp_path, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "chosen": f"yes {i}", "rejected": "no"}) + "\n"
                            for i in range(30)))
    first, stats = cached(tok, tmp_path, str(data), "pairs")
    assert not stats["cache_hit"]
    calls = []
    monkeypatch.setattr(data_cache._EncodeBatch, "__call__",
                        lambda self, batch, indices: calls.append(1) or pytest.fail("re-encoded"))
    again, stats = cached(tok, tmp_path, str(data), "pairs")
    assert stats["cache_hit"] and again.path == first.path and again[5] == first[5] and not calls
    monkeypatch.undo()
    other, stats = encode_source(tok[0], tok[1], str(data), "train", "pairs", EncodeSettings(64, 32),
                                 root=str(tmp_path / "cache"))
    assert not stats["cache_hit"] and other.path != first.path  # encoding settings are part of the key
    data.write_text(data.read_text() + json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n")
    grown, stats = cached(tok, tmp_path, str(data), "pairs")
    assert not stats["cache_hit"] and len(grown) == 31  # the file changed


def test_two_processes_give_the_same_rows_as_one(tok, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Question {i}?"}],
                                        "chosen": [{"role": "assistant", "content": f"Answer {i}."}],
                                        "rejected": [{"role": "assistant", "content": "No."}]}) + "\n"
                            for i in range(120)))
    one, _ = encode_source(tok[0], tok[1], str(data), "train", "pairs", S, num_proc=1, root=str(tmp_path / "a"))
    two, stats = encode_source(tok[0], tok[1], str(data), "train", "pairs", S, num_proc=2, root=str(tmp_path / "b"))
    assert stats["rows"] == 120 and one[:] == two[:]


def test_bad_rows_fail_with_their_index_or_are_skipped_and_counted(tok, tmp_path):
    data = tmp_path / "bad.jsonl"
    good = {"prompt": "Q?", "chosen": "a", "rejected": "b"}
    data.write_text("\n".join([json.dumps(good), json.dumps({"prompt": "Q?", "chosen": "a"}), "{not json",
                               json.dumps(good), "[1, 2]", json.dumps(good)]) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl row 1: missing field `rejected` \(set data.on_bad_row: skip"):
        cached(tok, tmp_path, str(data), "pairs")
    rows, stats = cached(tok, tmp_path, str(data), "pairs", on_bad_row="skip")
    assert stats["skipped"] == 3 and len(rows) == 3 and [r["index"] for r in rows] == [0, 1, 2]
    expected, skipped = in_memory(tok, str(data), "pairs", on_bad_row="skip")
    assert rows[:] == expected and skipped == 3
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    with pytest.raises(DataError, match="bad.jsonl line 2: invalid JSON"):
        cached(tok, tmp_path, str(data), "pairs")
    # the limit is reached before the bad rows: like load_records, they do not count (though the same chunk read them)
    first, stats = cached(tok, tmp_path, str(data), "pairs", limit=1)
    assert len(first) == 1 and stats["skipped"] == 0
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no usable rows"):
        cached(tok, tmp_path, str(tmp_path / "empty.jsonl"), "pairs")


def test_idk_transform_matches_attach_idk(tok, tmp_path):
    from alignkit.data.idk import attach_idk, idk_row, load_idk_answers

    answers = tuple(load_idk_answers(None))
    loaded = load_records("builtin:fictitious_authors", "forget05", "forget", limit=12)
    expected = encode_rows(tok[0], attach_idk(loaded.rows, answers, 3, "x"), "forget", S)[0]
    rows, _ = cached(tok, tmp_path, "builtin:fictitious_authors", "forget", split="forget05", limit=12,
                     transform=partial(idk_row, answers=answers, seed=3, origin="x"))
    assert rows[:] == expected and all("idk_completion_ids" in r for r in rows)


def test_workers_get_the_path_not_the_data_and_read_the_same_shards(tok, tmp_path):
    expected, _ = in_memory(tok, "builtin:concise_arithmetic", "pairs")
    rows, _ = cached(tok, tmp_path, "builtin:concise_arithmetic", "pairs")
    payload = pickle.dumps(rows)
    assert len(payload) < 1000 < len(pickle.dumps(expected))
    shipped = pickle.loads(payload)
    # the seeded stream, sharded over 2 workers: identical micro-batches, and no example twice within a step
    a, b = StaticSource(expected, 5, 2, 2), StaticSource(shipped, 5, 2, 2)
    for step in (0, 3, 17):
        seen = []
        for rank in range(2):
            assert a.micro_batches(step, rank, 2) == b.micro_batches(step, rank, 2)
            seen += [e["index"] for batch in b.micro_batches(step, rank, 2) for e in batch]
        assert len(seen) == len(set(seen)) == 8


def test_a_worker_without_the_files_is_told_to_use_shared_storage(tmp_path):
    with pytest.raises(DataError, match="not on this machine .* data.cache_dir"):
        len(EncodedRows(tmp_path / "elsewhere"))
