"""DPO family: spec §1.8 numeric checks, and parity with TRL's own implementation on the same inputs."""
import pytest
import torch

from alignkit.objectives import get_objective
from alignkit.objectives.dpo import DPOParams, dpo_family_loss

T = torch.tensor


def loss(pc, pr, rc, rr, **kw):
    return float(dpo_family_loss(T([pc]), T([pr]), T([rc]), T([rr]), **kw)[0])


@pytest.mark.parametrize("kw, expected", [
    (dict(beta=0.1, loss_type="sigmoid"), 0.5981),
    (dict(beta=0.1, loss_type="cdpo", eps=0.1), 0.6181),
    (dict(beta=0.1, loss_type="robust", eps=0.1), 0.5731),
    (dict(beta=0.1, loss_type="hinge"), 0.8000),
])
def test_spec_values_h2(kw, expected):
    assert loss(-10.0, -12.0, -11.0, -11.0, **kw) == pytest.approx(expected, abs=1e-4)


def test_sigmoid_zero_margin_is_ln2():
    assert loss(-5.0, -5.0, -5.0, -5.0, beta=0.1) == pytest.approx(0.6931, abs=1e-4)


def test_sigmoid_beta_half_negative_h():
    # h = -1: chosen log-ratio 0, rejected log-ratio +1
    assert loss(-10.0, -10.0, -10.0, -11.0, beta=0.5) == pytest.approx(0.9741, abs=1e-4)


@pytest.mark.parametrize("beta, expected", [(0.1, 16.0), (0.5, 0.0)])
def test_ipo_length_normalised(beta, expected):
    # chosen log-ratio 2 over 4 tokens, rejected log-ratio -1 over 2 tokens -> hbar = 0.5 + 0.5 = 1
    value = float(dpo_family_loss(T([2.0]), T([-1.0]), T([0.0]), T([0.0]), beta=beta, loss_type="ipo",
                                  chosen_lengths=T([4.0]), rejected_lengths=T([2.0]))[0])
    assert value == pytest.approx(expected, abs=1e-4)


def test_ipo_sequence_level_switch():
    value = float(dpo_family_loss(T([2.0]), T([-1.0]), T([0.0]), T([0.0]), beta=0.1, loss_type="ipo",
                                  ipo_length_normalize=False)[0])
    assert value == pytest.approx((3.0 - 5.0) ** 2, abs=1e-4)


def test_rewards_metrics():
    _, m = dpo_family_loss(T([-10.0]), T([-12.0]), T([-11.0]), T([-11.0]), beta=0.1)
    assert float(m["rewards/chosen"]) == pytest.approx(0.1, abs=1e-4)
    assert float(m["rewards/rejected"]) == pytest.approx(-0.1, abs=1e-4)
    assert float(m["rewards/accuracies"]) == 1.0
    assert float(m["rewards/margins"]) == pytest.approx(0.2, abs=1e-4)


def test_mean_over_pairs_and_gradient_direction():
    pc = T([-10.0, -3.0], requires_grad=True)
    pr = T([-12.0, -4.0], requires_grad=True)
    out, _ = dpo_family_loss(pc, pr, T([-11.0, -3.0]), T([-11.0, -4.0]), beta=0.1)
    out.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected


def test_params_validation():
    with pytest.raises(ValueError, match="eps"):
        DPOParams(loss_type="robust", eps=0.5)
    with pytest.raises(ValueError, match="beta"):
        DPOParams(beta=0.0)
    with pytest.raises(ValueError, match="cdpo and robust"):
        DPOParams(loss_type="sigmoid", eps=0.1)


def test_registered_with_rpo():
    obj = get_objective("dpo")
    assert obj.kind == "pairs" and obj.reference == "required"
    inputs = {"policy_chosen_logps": T([-4.0]), "policy_rejected_logps": T([-6.0]), "ref_chosen_logps": T([-4.0]),
              "ref_rejected_logps": T([-6.0]), "chosen_lengths": T([2.0]), "rejected_lengths": T([3.0])}
    base, _ = obj.loss_fn(inputs, DPOParams())
    with_rpo, m = obj.loss_fn(inputs, DPOParams(rpo_alpha=1.0))
    assert float(with_rpo - base) == pytest.approx(2.0, abs=1e-5)  # NLL per token = 4/2
    assert float(m["nll/chosen"]) == pytest.approx(2.0)


# ---- parity with TRL: its DPOTrainer's own loss code on the same model and batch ----------------------------------
@pytest.mark.parametrize("loss_type, eps", [("sigmoid", 0.0), ("robust", 0.1), ("ipo", 0.0), ("hinge", 0.0)])
def test_parity_with_trl_dpo_trainer(tiny_model_dir, tokenizer, loss_type, eps):
    """Runs `trl.DPOTrainer._compute_loss` (TRL's fused-LM-head forward and loss branch) and alignkit's
    token_logps -> dpo_family_loss on the same tiny model and the same two pairs."""
    from collections import defaultdict
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DPOTrainer, add_fused_lm_head

    from alignkit.data.builtin import concise_arithmetic
    from alignkit.data.encode import EncodeSettings
    from alignkit.kinds import encode_rows
    from alignkit.kinds.pairs import collate as collate_pairs
    from alignkit.models.logps import sequence_logps

    rows = concise_arithmetic("train")[:2]
    examples, _ = encode_rows(tokenizer, rows, "pairs", EncodeSettings(max_length=128, max_prompt_length=96))
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ref = torch.tensor([-30.0, -25.0]), torch.tensor([-60.0, -70.0])
    beta = 0.2

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        seq, lengths = sequence_logps(logits, batch["labels"])
        ours, _ = dpo_family_loss(seq[:2], seq[2:], ref[0], ref[1], beta=beta, loss_type=loss_type, eps=eps,
                                  chosen_lengths=lengths[:2].float(), rejected_lengths=lengths[2:].float())

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake_trainer = SimpleNamespace(
        model=model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=eps,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long(), "ref_chosen_logps": ref[0],
              "ref_rejected_logps": ref[1]}
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(fake_trainer, model, inputs, return_outputs=False)
    # Other kernels (full log-softmax vs TRL's fused head): sequence log-probs of |s| <= 300 differ by ~2 ulp
    # (6e-5); |dL/ds| <= beta = 0.2 for sigmoid/hinge, so the loss moves by <= ~1.2e-5. 5e-5 holds on every CPU.
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=5e-5)
    assert fake_trainer._metrics["eval"]["rewards/margins"]  # TRL really ran its metric code on this batch
