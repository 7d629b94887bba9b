"""PMPO (spec §4.4): numeric checks, the exact KL against a direct computation, the modes, and collapse protection."""
import math

import pytest
import torch

from alignkit.objectives import get_objective
from alignkit.objectives.pmpo import PMPOParams, exact_kl_per_position, pmpo_loss

T = torch.tensor


def test_spec_both_sides():
    # alpha 0.5, beta 0.5, log pi(acc) = -2, log pi(rej) = -3, KL = 0.1 -> -0.45
    loss, _ = pmpo_loss(T([-2.0, -3.0]), T([1.0, 0.0]), T([0.1, 0.1]), alpha=0.5, beta=0.5)
    assert float(loss) == pytest.approx(-0.45, abs=1e-4)


def test_spec_kl_per_position():
    ref, pol = torch.log(T([[0.5, 0.5]])), torch.log(T([[0.8, 0.2]]))
    assert float(exact_kl_per_position(ref, pol)[0]) == pytest.approx(0.2231, abs=1e-4)


def test_spec_one_sided():
    acc, _ = pmpo_loss(T([-2.0]), T([1.0]), T([0.0]), alpha=1.0, beta=0.0)
    assert float(acc) == pytest.approx(2.0, abs=1e-4)  # = NLL
    rej, _ = pmpo_loss(T([-3.0]), T([0.0]), T([0.0]), alpha=0.0, beta=0.0)
    assert float(rej) == pytest.approx(-3.0, abs=1e-4)  # unbounded below without the KL term


def test_kl_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(5, 11, generator=g), -1)
    pol = torch.log_softmax(torch.randn(5, 11, generator=g), -1)
    direct = torch.stack([torch.nn.functional.kl_div(pol[i], ref[i], reduction="sum", log_target=True)
                          for i in range(5)])
    manual = torch.tensor([sum(math.exp(r) * (r - p) for r, p in zip(ref[i].tolist(), pol[i].tolist()))
                           for i in range(5)])
    torch.testing.assert_close(exact_kl_per_position(ref, pol), direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exact_kl_per_position(ref, pol), manual, atol=1e-5, rtol=1e-5)


def _inputs():
    # Two sequences (accepted, rejected), 2 and 1 response positions, vocab 3.
    pol = torch.log_softmax(T([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0]]), -1)
    ref = torch.log_softmax(T([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), -1)
    return {"policy_logps": T([-2.0, -3.0]), "lengths": T([2.0, 1.0]), "labels": T([1.0, 0.0]),
            "policy_vocab_logps": pol, "ref_vocab_logps": ref, "position_sequence": torch.tensor([0, 0, 1])}


def test_registered_objective_sums_kl_per_sequence_and_averages():
    obj = get_objective("pmpo")
    assert obj.kind == "unpaired" and obj.distributions and obj.reference == "required"
    inputs = _inputs()
    kl = exact_kl_per_position(inputs["ref_vocab_logps"], inputs["policy_vocab_logps"])
    expected_kl = ((kl[0] + kl[1]) + kl[2]) / 2
    loss, metrics = obj.loss_fn(inputs, PMPOParams(alpha=0.5, beta=0.5))
    assert float(loss) == pytest.approx(-0.5 * -2.0 + 0.5 * -3.0 + 0.5 * float(expected_kl), abs=1e-5)
    assert float(metrics["kl"][0]) == pytest.approx(float(expected_kl), abs=1e-6)
    assert metrics["logps/accepted"][1] == 1 and metrics["logps/rejected"][1] == 1


@pytest.mark.parametrize("mode, expected_alpha", [("both", 0.3), ("accepted_only", 1.0), ("rejected_only", 0.0)])
def test_modes(mode, expected_alpha):
    p = PMPOParams(alpha=0.3, beta=0.0, mode=mode)
    assert p.effective_alpha == expected_alpha
    loss, _ = get_objective("pmpo").loss_fn(_inputs(), p)
    assert float(loss) == pytest.approx(-expected_alpha * -2.0 + (1 - expected_alpha) * -3.0, abs=1e-5)


def test_only_one_side_in_batch():
    inputs = _inputs()
    inputs["labels"] = T([0.0, 0.0])
    loss, metrics = get_objective("pmpo").loss_fn(inputs, PMPOParams(beta=0.0))
    assert "logps/accepted" not in metrics
    assert float(loss) == pytest.approx(0.5 * -2.5, abs=1e-5)


def test_length_normalize_switch():
    loss, _ = get_objective("pmpo").loss_fn(_inputs(), PMPOParams(alpha=1.0, beta=0.0, length_normalize=True))
    assert float(loss) == pytest.approx(1.0, abs=1e-5)  # -(-2 / 2 tokens)


def test_params_validation():
    with pytest.raises(ValueError, match="alpha"):
        PMPOParams(alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        PMPOParams(beta=-1)


def test_kl_keeps_rejected_only_from_collapsing():
    """Gradient descent on a toy categorical policy from rejected samples only (alpha = 0). The loss is
    log pi(y) + beta * KL(ref || pi), whose y-dependent part is (1 - beta * p_ref(y)) * log pi(y): it is bounded
    below only when beta * p_ref(y) > 1 - alpha. So beta = 0 collapses, beta = 1 (1 * 0.665 < 1) still drives
    pi(y) to 0 (more slowly), and beta = 2 settles at a finite log pi(y)."""
    ref = torch.log_softmax(T([2.0, 1.0, 0.0]), -1)
    finals = {}
    for beta in (0.0, 1.0, 2.0):
        logits = T([2.0, 1.0, 0.0], requires_grad=True)
        opt = torch.optim.SGD([logits], lr=0.5)
        for _ in range(300):
            pol = torch.log_softmax(logits, -1)
            kl = exact_kl_per_position(ref[None], pol[None])
            loss, _ = pmpo_loss(pol[:1], T([0.0]), kl, alpha=0.0, beta=beta)  # token 0 is rejected
            opt.zero_grad()
            loss.backward()
            opt.step()
        finals[beta] = float(torch.log_softmax(logits.detach(), -1)[0])
    assert finals[0.0] < -50 and finals[1.0] < -20
    assert finals[0.0] < finals[1.0]
    assert -5.0 < finals[2.0] < float(ref[0])  # moved away from the rejected answer, but bounded
