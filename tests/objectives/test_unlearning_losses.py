"""Unlearning loss math: every numeric check of spec §2.6, §3.7 and §8.10, plus the Appendix B pitfalls."""
import math

import pytest
import torch

from alignkit.objectives.unlearning_losses import (
    answer_preservation_loss,
    catnip_loss,
    catnip_weight,
    idk_dpo_loss,
    kl_batchmean,
    log1m_exp,
    masked_mse,
    max_entropy_loss,
    npo_loss,
    npo_weight,
    rmu_control_vector,
    rmu_loss,
    simnpo_loss,
    token_mean_nll,
    undial_loss,
    undial_targets,
)

T = torch.tensor


@pytest.mark.parametrize("beta, ell, expected", [(0.1, 0.0, 13.8629), (0.1, -2.0, 11.9628), (1.0, 1.0, 2.6265)])
def test_npo_spec_values(beta, ell, expected):
    assert float(npo_loss(T([ell - 5.0]), T([-5.0]), beta)) == pytest.approx(expected, abs=1e-4)


def test_npo_gradient_is_weighted_gradient_ascent():
    assert float(npo_weight(T([-3.0]), T([-3.0]), 0.1)) == pytest.approx(1.0)
    lp = T([-2.0], requires_grad=True)
    npo_loss(lp, T([-1.0]), beta=0.5).backward()
    assert float(lp.grad) == pytest.approx(float(npo_weight(T([-2.0]), T([-1.0]), 0.5)), abs=1e-6)


def test_npo_plus_retain_total():
    assert float(npo_loss(T([-5.0]), T([-5.0]), 0.1)) + 2.0 == pytest.approx(15.8629, abs=1e-4)


@pytest.mark.parametrize("beta, gamma, nll_sum, n, form, expected", [
    (2.5, 0.0, 6.0, 3.0, "code", 0.0054),
    (1.0, 0.5, 1.0, 1.0, "code", 0.9482),
    (1.0, 0.5, 1.0, 1.0, "paper", 0.9482),
    (2.0, 0.5, 1.0, 1.0, "code", 0.3133),
    (2.0, 0.5, 1.0, 1.0, "paper", 0.2014),
])
def test_simnpo_spec_values(beta, gamma, nll_sum, n, form, expected):
    value = float(simnpo_loss(T([-nll_sum]), T([n]), beta, gamma, margin_form=form))
    assert value == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("p, beta, loss, weight", [(0.5, 1, 0.6931, 0.5), (0.8, 1, 1.6094, 0.8),
                                                   (0.2, 2, 0.0606, 0.1176), (0.9, 6, 13.1833, 6.0)])
def test_catnip_spec_values_and_gradient_weight(p, beta, loss, weight):
    lp = T([[math.log(p)]], requires_grad=True)
    value = catnip_loss(lp, T([[1.0]]), beta)
    assert value.item() == pytest.approx(loss, abs=1e-4)
    value.backward()
    assert float(lp.grad) == pytest.approx(weight, abs=1e-4)
    assert float(catnip_weight(T(p), beta)) == pytest.approx(weight, abs=1e-4)


def test_catnip_token_mean_over_the_batch_and_masking():
    two = catnip_loss(T([[math.log(0.5), math.log(0.8)]]), T([[1.0, 1.0]]), 1.0)
    assert float(two) == pytest.approx(1.1513, abs=1e-4)
    # a padded position changes nothing; the mean is over tokens of the batch, not a mean of sequence means
    padded = catnip_loss(T([[math.log(0.5), math.log(0.8), -3.0]]), T([[1.0, 1.0, 0.0]]), 1.0)
    assert float(padded) == pytest.approx(1.1513, abs=1e-4)
    lp = T([[math.log(0.5), 0.0], [math.log(0.8), math.log(0.8)]], requires_grad=True)  # masked slot holds 0
    batch = catnip_loss(lp, T([[1.0, 0.0], [1.0, 1.0]]), 1.0)
    assert batch.item() == pytest.approx((0.6931 + 2 * 1.6094) / 3, abs=1e-4)
    batch.backward()
    assert torch.isfinite(lp.grad).all() and float(lp.grad[0, 1]) == 0.0


def test_catnip_on_a_token_the_model_is_certain_of():
    """log p == 0 exactly (a memorised token in fp32) once made the loss inf and every batch non-finite (measured on
    the built-in benchmark); with p capped at 1 - 1e-7 in the anchor, the loss is log(1e7) ≈ 16.1 and the gradient
    weight is CATNIP's limit for p -> 1, β."""
    for beta in (1.0, 2.0):
        lp = T([[0.0, math.log(0.5)]], requires_grad=True)
        value = catnip_loss(lp, T([[1.0, 1.0]]), beta)
        assert torch.isfinite(value)
        value.backward()
        assert float(lp.grad[0, 0]) == pytest.approx(beta / 2, abs=1e-4)  # token-mean over 2 tokens
    single = catnip_loss(T([[0.0]]), T([[1.0]]), 1.0)
    assert float(single) == pytest.approx(-math.log(1 / (1 + 1e-7 / (1 - 1e-7))) + math.log(1e7), rel=1e-3)


def test_catnip_reference_variant():
    value = catnip_loss(T([[-1.0]]), T([[1.0]]), 1.0, ref_token_logps=T([[-0.5]]))
    assert float(value) == pytest.approx(0.4741, abs=1e-4)


def test_log1m_exp_both_branches():
    for p in (1e-8, 0.3, 0.5, 0.7, 1 - 1e-6):
        assert float(log1m_exp(T(math.log(p), dtype=torch.float64))) == pytest.approx(math.log1p(-p), rel=1e-6)


def test_ga_and_gd_spec_values():
    forget_nll = token_mean_nll(T([[-1.0, -2.0]]), T([[1.0, 1.0]]))
    assert float(-forget_nll) == pytest.approx(-1.5)
    assert float(-forget_nll + 0.7) == pytest.approx(-0.8)


def test_me_spec_values():
    assert float(max_entropy_loss(T([[0.8, 0.2]]).log())) == pytest.approx(0.2231, abs=1e-4)
    assert float(max_entropy_loss(T([[0.5, 0.5]]).log())) == pytest.approx(0.0, abs=1e-7)


def test_ap_spec_value():
    assert float(answer_preservation_loss(T([2.0]), T([5.0]), 0.1)) == pytest.approx(5.5436, abs=1e-4)


def test_idk_dpo_uses_two_over_beta():
    # h = 0 -> -(2/β) log σ(0) = 20 ln 2 at β = 0.1 (TRL's DPO would give ln 2)
    assert float(idk_dpo_loss(T([-3.0]), T([-4.0]), T([-3.0]), T([-4.0]), 0.1)) == pytest.approx(13.8629, abs=1e-4)


def test_rmu_spec_value_and_control_vector():
    forget, retain = rmu_loss(T([[[1.0, 2.0]]]), T([[[0.0, 0.0]]]), T([[[1.0]]]), T([[[1.0]]]))
    assert float(forget) == pytest.approx(2.5) and float(retain) == 0.0
    u = rmu_control_vector(16, 6.5, torch.Generator().manual_seed(0))
    assert float(u.norm()) == pytest.approx(6.5, abs=1e-5) and bool((u >= 0).all())
    masked = masked_mse(T([[[1.0, 1.0], [9.0, 9.0]]]), T([[[0.0, 0.0]]]), T([[1.0, 0.0]]))
    assert float(masked) == pytest.approx(1.0)


def test_undial_spec_values():
    q = undial_targets(T([[2.0, 1.0, 0.0]]), T([0]), beta=1.0)
    assert q[0].tolist() == pytest.approx([0.4223, 0.4223, 0.1554], abs=1e-4)
    assert float(undial_loss(T([[2.0, 1.0, 0.0]]), q)) == pytest.approx(1.1406, abs=1e-4)


def test_kl_batchmean_counts_the_given_positions():
    p = T([[0.5, 0.5], [0.9, 0.1]]).log()
    q = T([[0.9, 0.1], [0.9, 0.1]]).log()
    kl_first = float((p[0].exp() * (p[0] - q[0])).sum())
    assert float(kl_batchmean(q, p, 2)) == pytest.approx(kl_first / 2, abs=1e-6)
    assert float(kl_batchmean(q, p, 4)) == pytest.approx(kl_first / 4, abs=1e-6)  # unmasked B·T denominator
