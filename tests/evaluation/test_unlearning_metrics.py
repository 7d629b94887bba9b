"""Unlearning metrics: every numeric check of spec §9.5, §10.9, §11 and §12."""
import math

import numpy as np
import pytest

from alignkit.evaluation import unlearning_metrics as m


def test_tofu_probability_and_truth_ratio():
    assert float(m.normalized_probability(0.5)) == pytest.approx(0.6065, abs=1e-4)
    r = m.truth_ratio(np.array([1.0]), np.array([[2.0, 3.0]]))
    assert float(1 / r[0]) == pytest.approx(4.4817, abs=1e-4) and float(r[0]) == pytest.approx(0.2231, abs=1e-4)
    assert m.truth_ratio_metric(r, "forget") == pytest.approx(0.2231, abs=1e-4)
    assert m.truth_ratio_metric(r, "retain") == pytest.approx(0.7769, abs=1e-4)


def test_truth_ratio_is_a_geometric_mean_over_perturbed_answers():
    # arithmetic mean of exp(-2), exp(-4) would differ from exp(-3)
    r = m.truth_ratio(np.array([0.0]), np.array([[2.0, 4.0]]))
    assert float(r[0]) == pytest.approx(math.exp(-3.0))


def test_option_probability_and_utility():
    assert m.option_probability(np.array([0.5]), np.array([[0.25, 0.25]])) == pytest.approx(0.5)
    assert m.model_utility([1.0, 0.5]) == pytest.approx(0.6667, abs=1e-4)
    assert m.model_utility([1.0, 0.0]) == 0.0


@pytest.mark.parametrize("a, b, p", [([1, 2, 3], [4, 5, 6], 0.1),
                                     ([0.1, 0.2, 0.3, 0.4], [0.15, 0.25, 0.35, 0.45], 1.0)])
def test_forget_quality_ks(a, b, p):
    assert m.forget_quality(np.array(a), np.array(b)) == pytest.approx(p, abs=1e-4)


def test_rouge_conventions():
    assert m.rouge_l("the cat sat on the mat", "the cat sat") == pytest.approx(0.5)
    assert m.rouge_l("the cat sat on the mat", "the cat sat", kind="f1") == pytest.approx(0.6667, abs=1e-4)
    assert m.rouge_l("Alice was born in Paris in 1950.", "She was born in Paris.") == pytest.approx(0.5714, abs=1e-4)
    assert m.rouge_l("a b c d", "a b x d", kind="f1", stemmer=False) == pytest.approx(0.75)


def test_min_k_and_min_k_plus_plus():
    assert m.min_k(np.array([-0.1, -2.0, -0.5, -3.0, -1.0]), 0.4) == pytest.approx(-2.5)
    assert m.min_k(np.array([-1.0, -2.0]), 0.1) == pytest.approx(-2.0)  # at least one token
    mu, sigma = m.token_distribution_stats(np.log(np.array([[0.5, 0.25, 0.25]])))
    assert float(mu[0]) == pytest.approx(-1.0397, abs=1e-4) and float(sigma[0]) == pytest.approx(0.3466, abs=1e-4)
    assert m.min_k_plus_plus(np.array([math.log(0.5)]), mu, sigma, 1.0) == pytest.approx(1.0, abs=1e-4)
    assert m.min_k_plus_plus(np.array([math.log(0.25)]), mu, sigma, 1.0) == pytest.approx(-1.0, abs=1e-4)


@pytest.mark.parametrize("forget, holdout, auc, leak, retrain", [
    ([1, 2], [3, 4], 0.0, -100.0, 0.5), ([3, 4], [1, 2], 1.0, 100.0, 0.5), ([1, 3], [2, 4], 0.25, -50.0, 0.5),
    ([1, 3], [2, 4], 0.25, -47.6111, 0.4772)])
def test_privleak_muse_convention(forget, holdout, auc, leak, retrain):
    # the spec's scores are MUSE-style s = -MinK (higher = less member-like); alignkit takes MinK itself
    got_auc, got_leak = m.privleak(-np.array(forget, float), -np.array(holdout, float), retrain)
    assert got_auc == pytest.approx(auc) and got_leak == pytest.approx(leak, abs=1e-4)


def test_privleak_of_auc_03():
    assert (0.3 - 0.5) / 0.5 * 100 == pytest.approx(-40.0)


def test_roc_auc_matches_sklearn_convention():
    # open-unlearning: roc_auc_score([0,0,1,1], [1,3,2,4]) = 0.75
    assert m.roc_auc(np.array([2.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx(0.75)
    assert m.roc_auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_loss_and_zlib_scores():
    assert m.loss_score(np.array([-1.0, -3.0])) == -2.0
    text = "hello hello hello"
    assert m.zlib_score(np.array([-1.0, -3.0]), text) == pytest.approx(-2.0 / len(__import__("zlib").compress(
        text.encode())))


def test_recovery_ratio():
    assert m.recovery_ratio(60, 10, 35) == pytest.approx(0.5)
    assert m.recovery_ratio(0.64, 0.22, 0.45) == pytest.approx(0.5476, abs=1e-4)
    assert m.recovery_ratio(0.64, 0.22, 0.45, floor=0.25) == pytest.approx(0.5128, abs=1e-4)
    assert math.isnan(m.recovery_ratio(1.0, 1.0, 0.5))


def test_fact_recalled():
    assert m.fact_recalled('"The Salt Tide"', 'Her best-known book is "The Salt Tide".')
    assert m.fact_recalled("Reykjavik", "She was born in reykjavik.")
    assert not m.fact_recalled("Reykjavik", "She was born in Oslo.")
    assert m.fact_recalled("1994", "born in 1994") and not m.fact_recalled("1994", "born in 1949")
    assert not m.fact_recalled("", "anything")
