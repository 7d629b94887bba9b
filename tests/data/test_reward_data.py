"""Reward-pair records, the spurious attribute's bins, and the built-in spurious-length benchmark."""
import pytest

from alignkit.data.builtin import spurious_length
from alignkit.data.encode import EncodeSettings
from alignkit.data.spurious import Binning, assign_bins, attribute_values, fit_binning
from alignkit.errors import DataError
from alignkit.kinds import encode_rows, load_records, normalize_row
from alignkit.kinds.reward_pairs import collate as collate_reward_pairs

PAIR = {"prompt": "Which is larger, 3 or 5?", "chosen": "5.", "rejected": "3."}


def test_quantile_bins_of_numbers():
    binning = fit_binning([1, 2, 3, 4, 5, 6, 7, 8], 4)
    assert binning.edges == pytest.approx([2.75, 4.5, 6.25])
    assert [binning.index(v) for v in (1, 3, 5, 7, 100)] == [0, 1, 2, 3, 3]
    assert binning.num_bins == 4


def test_categories_get_one_bin_each_and_unseen_values_their_own():
    binning = fit_binning([True, False, True], 4)
    assert binning.num_bins == 2 and binning.index(False) != binning.index(True)
    few = fit_binning([0, 2, 2, 0], 4)  # fewer distinct numbers than bins: categories, in numeric order
    assert few.categories == [0, 2] and few.index(2) == 1 and few.index(7) == 2
    assert fit_binning(["a", "b"], 4).index("c") == 2


def test_attribute_values_length_and_field():
    encoded = [{"chosen_ids": [1, 2, 3], "rejected_ids": [4], "z_chosen": "flattery", "z_rejected": "plain"}]
    assert attribute_values(encoded, "length") == [(3, 1)]
    assert attribute_values(encoded, "field") == [("flattery", "plain")]
    with pytest.raises(DataError, match="data.jsonl row 0: .*z_chosen"):
        attribute_values([{"chosen_ids": [1], "rejected_ids": [2]}], "field", "data.jsonl")
    assign_bins(encoded, [("flattery", "plain")], Binning(categories=["flattery", "plain"]))
    assert (encoded[0]["z_bin_chosen"], encoded[0]["z_bin_rejected"]) == (0, 1)


@pytest.mark.parametrize("extra, message", [
    ({"z_chosen": 1}, "come together"),
    ({"z_chosen": [1], "z_rejected": 2}, "must be a number, a string or a bool"),
    ({"margin": "big"}, "margin"),
])
def test_bad_reward_rows_name_the_field(extra, message):
    with pytest.raises(DataError, match=message):
        normalize_row({**PAIR, **extra}, "reward_pairs", "data.jsonl row 3")


def test_spurious_length_benchmark_is_deterministic_and_shifted():
    train, test, shifted = (spurious_length(s) for s in ("train", "test", "shifted"))
    assert (len(train), len(test), len(shifted)) == (1024, 128, 128)
    assert spurious_length("train") == train
    long_chosen = {name: sum(r["z_chosen"] > 0 for r in rows) / len(rows)
                   for name, rows in (("train", train), ("test", test), ("shifted", shifted))}
    assert 0.85 < long_chosen["train"] < 0.95 and 0.8 < long_chosen["test"] and long_chosen["shifted"] < 0.2
    questions = [{r["prompt"][0]["content"] for r in rows} for rows in (train, test, shifted)]
    numbers = [{tuple(sorted(map(int, __import__("re").findall(r"\d+", q)))) for q in qs} for qs in questions]
    assert not numbers[0] & numbers[1] and not numbers[0] & numbers[2] and not numbers[1] & numbers[2]
    for r in train[:50]:  # content decides: the chosen answer names the larger number
        assert str(r["answer"]) in r["chosen"][0]["content"].split(".")[0]
        assert (r["z_chosen"] == 0) != (r["z_rejected"] == 0)


def test_encode_and_collate_reward_pairs(tokenizer):
    loaded = load_records("builtin:spurious_length", "test", "reward_pairs", limit=4)
    encoded, _ = encode_rows(tokenizer, loaded.rows, "reward_pairs", EncodeSettings(128, 64))
    values = attribute_values(encoded, "length")
    assign_bins(encoded, values, fit_binning([z for v in values for z in v], 2))
    batch = collate_reward_pairs(encoded, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 8 and batch["z_bin"].shape == (8,)
    assert batch["z_bin"][:4].tolist() == [e["z_bin_chosen"] for e in encoded]
    assert batch["margin"].tolist() == [0.0] * 4
    longer = [len(e["chosen_ids"]) > len(e["rejected_ids"]) for e in encoded]
    assert longer == [r["z_chosen"] > r["z_rejected"] for r in loaded.rows]


def test_ultrafeedback_schema_loads_as_reward_pairs(tmp_path):
    """The hub recipe's dataset (trl-lib/ultrafeedback_binarized: implicit prompt, conversational, scores) on a
    local file of the same schema, since the hub is not reachable here."""
    import json

    rows = [{"chosen": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "long " * (i + 3)}],
             "rejected": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "short"}],
             "score_chosen": 8.0, "score_rejected": 4.0} for i in range(3)]
    path = tmp_path / "uf.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_records(str(path), "train", "reward_pairs")
    assert loaded.rows[0]["prompt"] == [{"role": "user", "content": "Q0"}]
    assert loaded.rows[0]["chosen"] == [{"role": "assistant", "content": "long long long "}]
    assert loaded.rows[0]["score_chosen"] == 8.0
