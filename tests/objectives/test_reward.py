"""Reward objectives: spec §6.4 values, the MMD regulariser against direct computations, invariance to bin labels,
and where gradients flow (head vs backbone)."""
import math

import pytest
import torch

from alignkit.objectives import get_objective
from alignkit.objectives.reward import (
    BTParams,
    CausalRMParams,
    bradley_terry_loss,
    invariance_penalty,
    median_bandwidth,
    rbf_mmd2,
)

T = torch.tensor


def test_bt_spec_value():
    assert float(bradley_terry_loss(T([1.0]), T([0.0]))) == pytest.approx(0.3133, abs=1e-4)


def test_bt_margin_shifts_the_logit():
    # r_w - r_l = 1 with margin 1 -> -log σ(0) = ln 2
    assert float(bradley_terry_loss(T([1.0]), T([0.0]), T([1.0]))) == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("a, b, s, expected", [
    ([[0.0]], [[1.0]], 1.0, 0.7869),
    ([[0.0], [1.0]], [[0.0], [1.0]], 1.0, 0.0),
    ([[0.0], [1.0]], [[2.0], [3.0]], 1.0, 1.1624),
])
def test_mmd_spec_values(a, b, s, expected):
    assert float(rbf_mmd2(T(a), T(b), s)) == pytest.approx(expected, abs=1e-4)


def test_mmd_of_single_points_spec():
    assert math.sqrt(float(rbf_mmd2(T([[0.0]]), T([[1.0]]), 1.0))) == pytest.approx(0.8871, abs=1e-4)


def test_mmd_matches_a_direct_double_loop():
    torch.manual_seed(0)
    a, b, s = torch.randn(5, 3), torch.randn(4, 3) + 1, 1.7

    def k(x, y):
        return math.exp(-float(((x - y) ** 2).sum()) / (2 * s * s))

    direct = (sum(k(x, y) for x in a for y in a) / 25 + sum(k(x, y) for x in b for y in b) / 16
              - 2 * sum(k(x, y) for x in a for y in b) / 20)
    assert float(rbf_mmd2(a, b, s)) == pytest.approx(direct, abs=1e-6)


def test_median_bandwidth_is_the_spec_median_without_gradient():
    g = torch.randn(6, 4, requires_grad=True)
    s = median_bandwidth(g)
    assert not s.requires_grad
    assert float(s) == pytest.approx(float(torch.cdist(g.detach(), g.detach()).median()), abs=1e-6)


def test_penalty_sums_bin_vs_complement_terms():
    torch.manual_seed(1)
    g, bins = torch.randn(7, 2), T([0, 0, 1, 1, 1, 2, 2])
    expected = sum(float(rbf_mmd2(g[bins == m], g[bins != m], 1.3)) for m in (0, 1, 2))
    value, terms = invariance_penalty(g, bins, 1.3)
    assert float(value) == pytest.approx(expected, abs=1e-6) and terms == 3
    expected_all = sum(float(rbf_mmd2(g[bins == m], g, 1.3)) for m in (0, 1, 2))
    assert float(invariance_penalty(g, bins, 1.3, compare="all")[0]) == pytest.approx(expected_all, abs=1e-6)


def test_penalty_is_invariant_to_relabelling_bins():
    torch.manual_seed(2)
    g = torch.randn(8, 3)
    bins = T([0, 0, 1, 1, 2, 2, 3, 3])
    relabelled = T([9, 9, 4, 4, 7, 7, 5, 5])
    assert float(invariance_penalty(g, bins)[0]) == pytest.approx(float(invariance_penalty(g, relabelled)[0]),
                                                                   abs=1e-6)


def test_a_single_bin_has_no_term():
    value, terms = invariance_penalty(torch.randn(4, 2), T([3, 3, 3, 3]))
    assert float(value) == 0.0 and terms == 0


def test_no_nan_gradient_on_identical_representations():
    # torch.cdist's backward is NaN at zero distance; the penalty must not be.
    g = torch.ones(4, 3, requires_grad=True)
    value, _ = invariance_penalty(g * 1.0, T([0, 0, 1, 1]), 1.0)
    value.backward()
    assert torch.isfinite(g.grad).all()


def _inputs(backbone, head, x, bins_w, bins_l):
    """A toy reward model: repr = backbone(x), reward = head(repr); x holds chosen then rejected rows."""
    reprs = torch.tanh(backbone(x))
    rewards = head(reprs).squeeze(-1)
    b = len(x) // 2
    return {"chosen_rewards": rewards[:b], "rejected_rewards": rewards[b:], "chosen_repr": reprs[:b],
            "rejected_repr": reprs[b:], "z_bin_chosen": bins_w, "z_bin_rejected": bins_l, "margins": torch.zeros(b)}


@pytest.mark.parametrize("features, head_gets_gradient", [("repr", False), ("reward", True)])
def test_penalty_gradient_reaches_the_head_only_when_comparing_rewards(features, head_gets_gradient):
    torch.manual_seed(3)
    backbone, head = torch.nn.Linear(5, 4), torch.nn.Linear(4, 1)
    x = torch.randn(8, 5)
    inputs = _inputs(backbone, head, x, T([0, 1, 0, 1]), T([1, 0, 1, 0]))
    fn = get_objective("causal_rm").loss_fn
    loss, _ = fn(inputs, CausalRMParams(lam=1.0, features=features))
    bt, _ = get_objective("reward_bt").loss_fn(inputs, BTParams())
    (loss - bt).backward()  # the penalty alone
    assert backbone.weight.grad.abs().sum() > 0
    head_grad = 0.0 if head.weight.grad is None else float(head.weight.grad.abs().sum())
    assert (head_grad > 0) == head_gets_gradient


def test_causal_rm_is_bt_plus_lambda_penalty():
    torch.manual_seed(4)
    backbone, head = torch.nn.Linear(5, 4), torch.nn.Linear(4, 1)
    inputs = _inputs(backbone, head, torch.randn(8, 5), T([0, 1, 2, 1]), T([1, 0, 2, 2]))
    inputs = {k: v.detach() if torch.is_tensor(v) else v for k, v in inputs.items()}  # values only, no gradients here
    bt = float(bradley_terry_loss(inputs["chosen_rewards"], inputs["rejected_rewards"]))
    g = torch.cat([inputs["chosen_repr"], inputs["rejected_repr"]])
    bins = torch.cat([inputs["z_bin_chosen"], inputs["z_bin_rejected"]])
    penalty = float(invariance_penalty(g, bins)[0])
    loss, metrics = get_objective("causal_rm").loss_fn(inputs, CausalRMParams(lam=2.5))
    assert float(loss) == pytest.approx(bt + 2.5 * penalty, abs=1e-5)
    assert float(metrics["mmd"]) == pytest.approx(penalty, abs=1e-5)
    # conditional: within chosen and within rejected, each with its own bandwidth
    cond = (float(invariance_penalty(inputs["chosen_repr"], inputs["z_bin_chosen"])[0])
            + float(invariance_penalty(inputs["rejected_repr"], inputs["z_bin_rejected"])[0]))
    loss_c, _ = get_objective("causal_rm").loss_fn(inputs, CausalRMParams(lam=1.0, conditional=True))
    assert float(loss_c) == pytest.approx(bt + cond, abs=1e-5)
    loss_0, _ = get_objective("causal_rm").loss_fn(inputs, CausalRMParams(lam=0.0))
    assert float(loss_0) == pytest.approx(bt, abs=1e-6)


def test_bt_accuracy_metric_and_centering():
    inputs = {"chosen_rewards": T([1.0, -1.0]), "rejected_rewards": T([0.0, 0.0]), "margins": torch.zeros(2)}
    loss, metrics = get_objective("reward_bt").loss_fn(inputs, BTParams(center_rewards=0.5))
    assert float(metrics["accuracy"]) == 0.5
    bt = float(bradley_terry_loss(inputs["chosen_rewards"], inputs["rejected_rewards"]))
    assert float(loss) == pytest.approx(bt + 0.5 * (1 + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("params", [dict(lam=-1.0), dict(bandwidth=0.0), dict(center_rewards=-0.1)])
def test_bad_params_are_rejected(params):
    with pytest.raises(ValueError):
        CausalRMParams(**params)


def test_unbiased_estimator_drops_the_diagonal():
    a, b = T([[0.0], [1.0]]), T([[2.0], [3.0]])
    k = [[math.exp(-((x - y) ** 2) / 2) for y in (0, 1, 2, 3)] for x in (0, 1, 2, 3)]
    direct = k[0][1] + k[2][3] - 2 * (k[0][2] + k[0][3] + k[1][2] + k[1][3]) / 4
    assert float(rbf_mmd2(a, b, 1.0, unbiased=True)) == pytest.approx(direct, abs=1e-6)
    # one distribution, large samples: unbiased ~ 0, biased clearly > 0 for small bins
    torch.manual_seed(5)
    x, y = torch.randn(400, 2), torch.randn(3, 2)
    assert abs(float(rbf_mmd2(x[:200], x[200:], 1.0, unbiased=True))) < 0.02
    assert float(rbf_mmd2(y, x, 1.0)) > float(rbf_mmd2(y, x, 1.0, unbiased=True))
    # a bin with one sample has no unbiased term
    value, terms = invariance_penalty(torch.randn(5, 2), T([0, 1, 1, 1, 1]), 1.0, estimator="unbiased")
    assert terms == 0 and float(value) == 0.0
