"""Row builders of online rounds (alignkit/rollout/builders.py): what each makes of scored completions, and the
errors a recipe gets for a builder that does not fit its objective."""
import pytest

from alignkit.errors import RecipeError
from alignkit.rollout.builders import best_vs_worst, make_row_builder, rejection_sampling, unpaired_by_score
from alignkit.rollout.feedback import Feedback
from alignkit.rollout.types import Completion

ROWS = [{"prompt": [{"role": "user", "content": "1+1?"}]}, {"prompt": "2+2?"}]


def _completions(*specs):
    return [Completion(p, k, text, [], [], "stop") for p, k, text in specs]


def test_unpaired_and_rejection_sampling_rows():
    comps = _completions((0, 0, "2"), (1, 0, "5"), (1, 1, "?"))
    fb = [Feedback(1.0, "", "x"), Feedback(0.0, "", "x"), Feedback(None, "words only", "x")]
    built = unpaired_by_score(ROWS, comps, fb, threshold=0.5)
    assert [r["label"] for r in built] == [True, False]  # the unscored completion is dropped
    assert built[0]["completion"] == [{"role": "assistant", "content": "2"}] and built[1]["completion"] == "5"
    assert rejection_sampling(ROWS, comps, fb, min_score=1.0) == [
        {"prompt": ROWS[0]["prompt"], "completion": [{"role": "assistant", "content": "2"}]}]


def test_best_vs_worst_pairs_per_prompt():
    comps = _completions((0, 0, "a"), (0, 1, "b"), (0, 2, "c"), (1, 0, "x"), (1, 1, "y"))
    fb = [Feedback(s, "", "x") for s in (0.2, 0.9, 0.2, 0.5, 0.5)]
    pairs = best_vs_worst(ROWS, comps, fb)
    assert pairs == [{"prompt": ROWS[0]["prompt"], "chosen": [{"role": "assistant", "content": "b"}],
                      "rejected": [{"role": "assistant", "content": "a"}]}]  # prompt 1: a tie, no pair
    assert best_vs_worst(ROWS, comps, fb, min_gap=0.8) == []


def test_builder_must_fit_the_objective():
    assert make_row_builder("auto", {}, "pairs") is not None
    with pytest.raises(RecipeError, match="best_vs_worst makes `pairs` records, but the objective consumes `sft`"):
        make_row_builder("best_vs_worst", {}, "sft")
    with pytest.raises(RecipeError, match="unknown row builder `nope`"):
        make_row_builder("nope", {}, "sft")
    with pytest.raises(RecipeError, match="no parameter 'threshold'"):
        make_row_builder("rejection_sampling", {"threshold": 1}, "sft")
    with pytest.raises(RecipeError, match="no row builder makes `forget` records"):
        make_row_builder("auto", {}, "forget")
