"""Unlearning objectives through the one training loop (torch backend, tiny-llama): forget + retain batches, the
reference modes each objective needs, and the retain tensors the engine builds."""
import json

import pytest
import torch

from alignkit.config import recipe_from_dict
from alignkit.engine.loop import TrainData, objective_inputs, retain_batch_for, train
from alignkit.objectives import get_objective
from alignkit.pipelines.preference import prepare_data


def _recipe(tmp_path, name, **objective):
    return recipe_from_dict({
        "run": {"output_dir": str(tmp_path)},
        "model": {"path": "builtin:tiny-llama"},
        "data": {"train": "builtin:fictitious_authors", "train_split": "forget05",
                 "eval": "builtin:fictitious_authors", "eval_split": "forget05", "eval_size": 4,
                 "retain": "builtin:fictitious_authors", "retain_split": "retain95", "retain_size": 24,
                 "max_length": 96, "max_prompt_length": 64},
        "objective": {"name": name, **objective},
        "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 3, "micro_batch_size": 4, "progress_bar": False},
        "eval": {"generate": False},
    })


@pytest.mark.parametrize("name", ["ga", "grad_diff", "kl_retain", "npo", "npo_rt", "npo_kl", "simnpo", "simnpo_rt",
                                  "catnip", "catnip_ref", "max_entropy"])
def test_every_unlearning_objective_trains(tmp_path, name):
    recipe = _recipe(tmp_path, name)
    encoded, _ = prepare_data(recipe)
    objective = get_objective(name)
    assert bool(encoded["retain"]) == ("retain" in objective.needs)
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    train(recipe, data, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and records[-1]["step"] == 3
    assert all(torch.isfinite(torch.tensor(v)) for r in records for k, v in r.items() if k != "step")
    if "retain" not in objective.needs:  # forgetting raises the forget NLL (with retain terms a random tiny model
        # mostly learns the shared text patterns of the retain set, which lowers it too)
        assert records[-1]["eval/forget_nll"] > records[0]["eval/forget_nll"]
    else:
        assert "eval/retain_loss" in records[-1] and "train/retain_loss" in records[-1]
    if name in ("kl_retain", "npo_kl"):  # the policy starts as the reference: KL 0 at step 0, > 0 after
        assert abs(records[0]["eval/retain_loss"]) < 1e-5 and records[-1]["eval/retain_loss"] > 1e-5
    if name.startswith("npo"):  # at step 0 π = π_ref: the NPO loss is (2/β) ln 2
        assert records[0]["eval/npo_loss"] == pytest.approx(20 * 0.693147, abs=1e-3)


def test_retain_tensors_from_the_all_token_forward_match_a_label_forward(tmp_path):
    from alignkit.engine.loop import LiveReference, _forward
    from alignkit.models.loading import load_causal_lm

    recipe = _recipe(tmp_path, "npo_kl")
    encoded, _ = prepare_data(recipe)
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    model = load_causal_lm("builtin:tiny-llama").eval()
    from contextlib import nullcontext

    from alignkit.data.encode import collate_sft

    batch = collate_sft(data.train[:3], data.pad_id)
    retain = retain_batch_for(data, 3, 0)
    reference = LiveReference(load_causal_lm("builtin:tiny-llama"), nullcontext(), vocab=True)
    with torch.no_grad():
        inputs = objective_inputs(get_objective("npo_kl"), model, batch, nullcontext(), reference, retain)
        plain = _forward(model, retain, nullcontext())
    torch.testing.assert_close(inputs["retain_token_logps"], plain["token_logps"], atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs["retain_logps"], plain["seq_logps"], atol=1e-4, rtol=0)
    # distributions at every non-padding position after the first; the answer positions are flagged
    n_positions = int((retain["attention_mask"][:, 1:]).sum())
    assert inputs["retain_vocab_logps"].shape[0] == n_positions
    assert int(inputs["retain_vocab_is_label"].sum()) == int(plain["token_mask"].sum())
    assert float((inputs["retain_vocab_logps"] - inputs["ref_retain_vocab_logps"]).abs().max()) < 1e-5


def test_retain_objective_without_retain_data_is_refused(tmp_path):
    from alignkit.errors import RecipeError

    with pytest.raises(RecipeError, match="data.retain"):
        recipe_from_dict({"model": {"path": "builtin:tiny-llama"},
                          "data": {"train": "builtin:fictitious_authors", "train_split": "forget05"},
                          "objective": {"name": "npo_rt"}})
