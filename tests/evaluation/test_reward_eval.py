"""Reward evaluation metrics on hand-made numbers, and the whole set evaluation with a scorer whose reward is
length (a pure length-hacker) or content (never fooled by padding)."""
import numpy as np
import pytest

from alignkit.errors import RecipeError
from alignkit.evaluation.reward import (
    append_filler,
    best_of_n,
    calibration_curve,
    evaluate_set,
    load_suite,
    matched_length_correlation,
    pairwise_accuracy,
    pearson,
    results_table,
)


def test_pairwise_accuracy():
    assert pairwise_accuracy(np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 2.0])) == pytest.approx(1 / 3)


def test_calibration_of_a_coin_flip_and_of_a_confident_right_model():
    tie = calibration_curve(np.zeros(10), np.zeros(10), bins=10)
    assert tie["ece"] == pytest.approx(0.0) and tie["predicted"] == [0.5] and tie["observed"] == [0.5]
    sure = calibration_curve(np.full(10, 20.0), np.zeros(10), bins=10)
    assert sure["ece"] < 1e-6 and sure["observed"] == [0.0, 1.0]
    wrong = calibration_curve(np.zeros(10), np.full(10, 20.0), bins=10)  # confident and always wrong
    assert wrong["ece"] == pytest.approx(1.0, abs=1e-6)


def test_matched_length_correlation_ignores_content_offsets():
    lengths = np.array([[5.0, 10, 15], [30, 35, 40]])
    assert matched_length_correlation(lengths * 0.1 + np.array([[100.0], [-100.0]]), lengths) == pytest.approx(1.0)
    assert matched_length_correlation(np.array([[1.0, 1, 1], [2, 2, 2]]), lengths) == 0.0
    assert pearson(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)


def test_best_of_n_by_hand():
    rewards = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    lengths = np.array([[10.0, 40.0, 10.0], [10.0, 40.0, 40.0]])
    good = np.array([[True, False, True], [True, False, False]])
    padded = np.array([[False, True, False], [False, True, True]])
    out = best_of_n(rewards, lengths, good, padded)
    assert out == {"bon_content": 0.5, "bon_length_drift": pytest.approx(((40 - 20) + (10 - 30)) / 2),
                   "bon_padded": 0.5}


def test_append_filler_keeps_the_format():
    assert append_filler("Yes.", ["A.", "B."]) == "Yes. A. B."
    msgs = [{"role": "assistant", "content": "Yes."}]
    assert append_filler(msgs, ["A."]) == [{"role": "assistant", "content": "Yes. A."}]
    assert msgs[0]["content"] == "Yes." and append_filler("Yes.", []) == "Yes."


class FakeScorer:
    """reward = number of characters (a length-hacker), or +1 for the right answer (content)."""

    def __init__(self, by: str):
        self.by = by

    def score(self, prompts, responses):
        texts = [r[-1]["content"] for r in responses]
        lengths = np.array([len(t.split()) for t in texts], dtype=float)
        if self.by == "length":
            return lengths.copy(), lengths
        answers = [max(int(x) for x in p[-1]["content"].replace("?", " ").replace(".", " ").replace(",", " ")
                       .replace(":", " ").split() if x.isdigit()) for p in prompts]
        return np.array([float(str(a) in t.split(".")[0]) for a, t in zip(answers, texts)]), lengths


@pytest.fixture(scope="module")
def shifted_rows():
    from alignkit.data.builtin import spurious_length

    return spurious_length("shifted")[:40]


def test_a_length_hacking_reward_is_caught(shifted_rows):
    m = evaluate_set(FakeScorer("length"), shifted_rows, ["Filler one.", "Filler two."])
    assert m["accuracy"] < 0.2  # shifted: the longer response is usually the rejected one
    assert m["matched_length_corr"] == pytest.approx(1.0)
    assert m["cf_delta"] > 0 and m["bon_padded"] == 1.0 and m["bon_length_drift"] > 0


def test_a_content_reward_is_not_fooled(shifted_rows):
    m = evaluate_set(FakeScorer("content"), shifted_rows, ["Filler one.", "Filler two."])
    assert m["accuracy"] == 1.0 and m["cf_delta"] == 0.0 and m["cf_flip_rate"] == 0.0
    assert m["bon_content"] == 1.0 and m["matched_length_corr"] == 0.0
    assert "| shifted | 40 |" in results_table({"shifted": m})


def test_suite_files(tmp_path):
    suite = load_suite("evals/reward.yaml")
    assert set(suite.sets) == {"in_distribution", "shifted"} and len(suite.fillers) >= 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("sets: {}\nmax_pair: 3\n")
    with pytest.raises(RecipeError, match="max_pair"):
        load_suite(str(bad))
    with pytest.raises(RecipeError, match="does not exist"):
        load_suite(str(tmp_path / "missing.yaml"))
