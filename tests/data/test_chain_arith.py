"""builtin:chain_arith: seeded multi-step arithmetic with an exact per-step checker (the true first wrong step)."""
import pytest

from alignkit.data.chain_arith import chain_arith, check, score_chain
from alignkit.kinds import load_records

ROW = {"start": 7, "ops": [["+", 12], ["*", 3], ["-", 15]], "answer": 42}
RIGHT = "7 + 12 = 19\n19 * 3 = 57\n57 - 15 = 42\nAnswer: 42"


def key(row):
    return row["start"], tuple(map(tuple, row["ops"]))


def test_splits_are_seeded_disjoint_and_sized():
    train, test = chain_arith("train"), chain_arith("test")
    assert (len(train), len(test)) == (2048, 128)
    assert not {key(r) for r in train} & {key(r) for r in test}  # held-out problems never in train
    assert chain_arith("test") == test and chain_arith("test", seed=1) != test
    assert chain_arith("train", size=10) == train[:10]
    assert {len(r["ops"]) for r in train} == {3, 4}
    hard = chain_arith("test_hard")
    assert {len(r["ops"]) for r in hard} == {5, 6} and not {key(r) for r in chain_arith("train_hard")} & \
        {key(r) for r in hard}
    assert {len(r["ops"]) for r in chain_arith("test", size=20, ops=(2, 2))} == {2}
    for row in train[:200] + hard:  # every reference solution passes its own checker; values stay in 3 digits
        c = check(row, row["completion"][0]["content"])
        assert c.correct and c.format and c.first_wrong_step is None
        values = [row["start"]]
        for op, b in row["ops"]:
            values.append(values[-1] + b if op == "+" else values[-1] - b if op == "-" else values[-1] * b)
        assert all(0 <= v <= 999 for v in values) and values[-1] == row["answer"]
    with pytest.raises(KeyError):
        chain_arith("validation")
    with pytest.raises(ValueError, match="at most 128 held-out problems"):
        chain_arith("test", size=129)
    with pytest.raises(ValueError, match="fewer than"):
        chain_arith("train", size=500, ops=(1, 1), max_operand=3)


@pytest.mark.parametrize("completion,correct,fmt,first_wrong", [
    (RIGHT, True, True, None),
    ("7 + 12 = 19\n19 * 3 = 58\n58 - 15 = 43\nAnswer: 43", False, True, 1),  # wrong product: step 1
    ("7 + 12 = 19\n19 * 4 = 76\n76 - 15 = 61\nAnswer: 61", False, True, 1),  # wrong operand (right arithmetic)
    ("7 + 12 = 19\n19 * 3 = 57\n57 - 15 = 42", False, False, 3),  # no answer line: the missing line is wrong
    ("7 + 12 = 19\n19 * 3 = 57\n57 - 15 = 42\nAnswer: 41", False, True, 3),  # wrong final answer
    ("7 + 12 = 19\nSo we multiply.\n19 * 3 = 57\n57 - 15 = 42\nAnswer: 42", True, False, 1),  # prose line
    ("7 + 12 = 19\nAnswer: 19", False, True, 1),  # answers early
    ("", False, False, 0),
])
def test_checker_finds_the_first_wrong_step(completion, correct, fmt, first_wrong):
    c = check(ROW, completion)
    assert (c.correct, c.format, c.first_wrong_step) == (correct, fmt, first_wrong)
    assert c.steps_right == (first_wrong if first_wrong is not None else 4)


def test_records_and_behavioural_score():
    rows = load_records("builtin:chain_arith", "test", "sft", limit=5).rows
    assert len(rows) == 5 and rows[0]["answer"] == chain_arith("test")[0]["answer"]
    score = score_chain(ROW, "7 + 12 = 19\n19 * 3 = 58\nAnswer: 43")
    assert score == {"correct": 0.0, "format": 1.0, "steps_right": 0.25, "lines": 3.0}
