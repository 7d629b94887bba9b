"""Data: sources, validation with row/field errors, skip-and-count, both TRL formats, masking and truncation."""
import json

import pytest

from alignkit.data.builtin import concise_arithmetic, score_completion
from alignkit.data.encode import IGNORE, EncodeSettings
from alignkit.errors import DataError
from alignkit.kinds import encode_rows, load_records
from alignkit.kinds.pairs import collate as collate_pairs
from alignkit.kinds.pairs import encode as encode_pair


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {"prompt": "Q: 1+1?", "chosen": " 2", "rejected": " 3"}


def test_builtin_is_deterministic_and_held_out_is_disjoint():
    train, test = concise_arithmetic("train"), concise_arithmetic("test")
    assert train == concise_arithmetic("train") and len(train) == 512 and len(test) == 64
    assert concise_arithmetic("train", seed=1) != train
    questions = {r["prompt"][0]["content"] for r in test}
    assert not any(r["prompt"][0]["content"] in questions for r in train)


def test_scorer():
    row = {"answer": 42}
    assert score_completion(row, "The answer is 42.") == {"format": 1.0, "correct": 1.0, "any_correct": 1.0,
                                                          "words": 4.0}
    assert score_completion(row, "The answer is 41.")["correct"] == 0.0
    assert score_completion(row, "Well, 40 + 2 = 42")["format"] == 0.0
    assert score_completion(row, "Well, 40 + 2 = 42")["any_correct"] == 1.0


def test_local_jsonl_json_parquet(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD])
    assert len(load_records(str(tmp_path / "d.jsonl"), "train", "pairs").rows) == 2
    (tmp_path / "d.json").write_text(json.dumps({"train": [GOOD], "test": [GOOD, GOOD]}))
    assert len(load_records(str(tmp_path / "d.json"), "test", "pairs").rows) == 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([GOOD] * 3), tmp_path / "d.parquet")
    assert len(load_records(str(tmp_path / "d.parquet"), "train", "pairs").rows) == 3


def test_malformed_rows_name_file_row_and_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"prompt": "x", "chosen": "y"}, GOOD])
    with pytest.raises(DataError, match=r"bad.jsonl row 1: missing field `rejected`"):
        load_records(str(path), "train", "pairs")
    path = write_jsonl(tmp_path / "bad2.jsonl", [GOOD, "{not json", GOOD])
    with pytest.raises(DataError, match=r"bad2.jsonl line 2: invalid JSON"):
        load_records(str(path), "train", "pairs")
    path = write_jsonl(tmp_path / "bad3.jsonl", [{"prompt": "x", "chosen": 5, "rejected": "z"}])
    with pytest.raises(DataError, match="row 0: field `chosen` must be a string or a list"):
        load_records(str(path), "train", "pairs")


def test_skip_bad_rows_counts_them(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"prompt": "x"}, "{oops", GOOD, {"chosen": ""}])
    loaded = load_records(str(path), "train", "pairs", on_bad_row="skip")
    assert len(loaded.rows) == 2 and loaded.skipped == 3


def test_missing_file_and_unknown_builtin(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_records(str(tmp_path / "nope.jsonl"), "train", "pairs")
    with pytest.raises(DataError, match="unknown built-in dataset `builtin:nope`"):
        load_records("builtin:nope", "train", "pairs")
    with pytest.raises(DataError, match="has no split `validation`"):
        load_records("builtin:concise_arithmetic", "validation", "pairs")


def test_hub_dataset_unreachable_gives_clear_error():
    with pytest.raises(DataError, match="cannot load hub dataset `no-such-org/no-such-dataset`"):
        load_records("no-such-org/no-such-dataset", "train", "pairs")


def test_implicit_prompt_conversational(tmp_path):
    user = {"role": "user", "content": "Hi"}
    row = {"chosen": [user, {"role": "assistant", "content": "Hello!"}],
           "rejected": [user, {"role": "assistant", "content": "Go away."}]}
    loaded = load_records(str(write_jsonl(tmp_path / "u.jsonl", [row])), "train", "pairs")
    assert loaded.rows[0]["prompt"] == [user]
    assert loaded.rows[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]


def test_mixed_formats_rejected(tmp_path):
    row = {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}
    with pytest.raises(DataError, match="all be strings or all be message lists"):
        load_records(str(write_jsonl(tmp_path / "m.jsonl", [row])), "train", "pairs")


def test_conversational_encoding_masks_prompt(tokenizer):
    row = concise_arithmetic("train")[0]
    ex = encode_pair(tokenizer, row, EncodeSettings())
    batch = collate_pairs([{**ex, "index": 0}], tokenizer.pad_token_id)
    n_prompt = len(ex["prompt_ids"])
    assert (batch["labels"][:, :n_prompt] == IGNORE).all()
    chosen_text = tokenizer.decode(batch["input_ids"][0, n_prompt:n_prompt + len(ex["chosen_ids"])])
    assert chosen_text.startswith("The answer is") and chosen_text.endswith("<|im_end|>\n")
    assert "<|im_start|>assistant" in tokenizer.decode(ex["prompt_ids"])


def test_standard_format_appends_eos(tokenizer):
    ex = encode_pair(tokenizer, GOOD, EncodeSettings(use_chat_template=False))
    assert ex["chosen_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex["prompt_ids"]) == "Q: 1+1?"


def test_truncation_rules(tokenizer):
    row = {"prompt": "word " * 50, "chosen": "yes " * 40, "rejected": "no"}
    s = EncodeSettings(max_length=30, max_prompt_length=10, truncation_mode="keep_end")
    ex = encode_pair(tokenizer, row, s)
    assert len(ex["prompt_ids"]) == 10 and len(ex["prompt_ids"]) + len(ex["chosen_ids"]) == 30
    assert ex["truncated"]
    full = tokenizer("word " * 50, add_special_tokens=False)["input_ids"]
    assert ex["prompt_ids"] == full[-10:]
    assert encode_pair(tokenizer, row, EncodeSettings(30, 10, "keep_start"))["prompt_ids"] == full[:10]
    _, truncated = encode_rows(tokenizer, [row, GOOD], "pairs", s)
    assert truncated == 1


def test_collate_pads_only_to_batch_max(tokenizer):
    rows = concise_arithmetic("train")[:3]
    examples, _ = encode_rows(tokenizer, rows, "pairs", EncodeSettings())
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    lengths = [len(e["prompt_ids"]) + len(e[k]) for k in ("chosen_ids", "rejected_ids") for e in examples]
    assert batch["input_ids"].shape == (6, max(lengths))
    assert batch["attention_mask"].sum().item() == sum(lengths)


# ---- unpaired records (PMPO) ---------------------------------------------------------------------------------
def test_kto_format_and_labels(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hey"}],
             "label": True},
            {"prompt": "Q", "response": "A", "label": "rejected"}, {"prompt": "Q", "completion": "B", "label": 1}]
    loaded = load_records(str(write_jsonl(tmp_path / "kto.jsonl", rows)), "train", "unpaired")
    assert [r["label"] for r in loaded.rows] == [True, False, True]
    assert loaded.rows[1]["completion"] == "A"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "completion": "A", "label": "maybe"}])
    with pytest.raises(DataError, match="row 0: field `label` must be"):
        load_records(str(bad), "train", "unpaired")


def test_pairs_become_unpaired_and_sides_can_be_dropped():
    both = load_records("builtin:concise_arithmetic", "test", "unpaired")
    assert len(both.rows) == 128
    first, second = both.rows[0], both.rows[1]
    assert first["prompt"] == second["prompt"] and first["label"] and not second["label"]
    assert first["completion"][0]["content"].startswith("The answer is") and first["answer"] == second["answer"]
    rejected = load_records("builtin:concise_arithmetic", "test", "unpaired", keep_labels=(False,))
    assert len(rejected.rows) == 64 and not any(r["label"] for r in rejected.rows)
    limited = load_records("builtin:concise_arithmetic", "test", "unpaired", limit=5)
    assert len(limited.rows) == 5


def test_unpaired_collate_carries_labels(tokenizer):
    from alignkit.kinds.unpaired import collate as collate_unpaired

    rows = load_records("builtin:concise_arithmetic", "test", "unpaired").rows[:4]
    examples, _ = encode_rows(tokenizer, rows, "unpaired", EncodeSettings())
    batch = collate_unpaired(examples, tokenizer.pad_token_id)
    assert batch["label"].tolist() == [1, 0, 1, 0] and batch["input_ids"].shape[0] == 4
