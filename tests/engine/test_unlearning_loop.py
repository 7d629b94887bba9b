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


RMU_TINY = {"layer": 1, "steering": 2.0, "alpha": 1.0}


@pytest.mark.parametrize("name", ["ga", "grad_diff", "kl_retain", "npo", "npo_rt", "npo_kl", "simnpo", "simnpo_rt",
                                  "catnip", "catnip_ref", "max_entropy", "idk_dpo", "idk_ap", "rmu"])
def test_every_unlearning_objective_trains(tmp_path, name):
    recipe = _recipe(tmp_path, name, **(RMU_TINY if name == "rmu" else {}))
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
    if name == "idk_dpo":  # π = π_ref at step 0: margin 0, loss (2/β) ln 2; then the IDK answer gains on the forget one
        assert records[0]["eval/idk_margin"] == pytest.approx(0.0, abs=1e-4)
        assert records[0]["eval/idk_dpo_loss"] == pytest.approx(20 * 0.693147, abs=1e-3)
        assert records[-1]["eval/idk_margin"] > 0
    if name == "idk_ap":  # NLL(y_idk | x_f) + AP on retain questions, each reported
        first = records[0]
        assert first["eval/loss"] == pytest.approx(first["eval/idk_nll"] + first["eval/retain_loss"], rel=1e-5)
    if name == "rmu":  # the retain activations start equal to the frozen model's
        assert records[0]["eval/rmu_retain"] == pytest.approx(0.0, abs=1e-8)
        assert records[-1]["eval/rmu_forget"] < records[0]["eval/rmu_forget"]


def test_retain_tensors_from_the_all_token_forward_match_a_label_forward(tmp_path):
    from alignkit.engine.loop import LiveReference
    from alignkit.models.loading import load_causal_lm
    from alignkit.models.logps import forward_batch as _forward

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


def test_idk_answers_are_attached_per_row_and_deterministic(tmp_path):
    recipe = _recipe(tmp_path, "idk_ap")
    a, _ = prepare_data(recipe)
    b, _ = prepare_data(recipe)
    assert all("idk_completion_ids" in e for e in list(a["train"]) + a["retain"])
    assert [e["idk_completion_ids"] for e in a["train"]] == [e["idk_completion_ids"] for e in b["train"]]
    assert len({tuple(e["idk_completion_ids"]) for e in a["train"]}) > 3  # several phrasings in use
    assert all(e["idk_prompt_ids"] == e["prompt_ids"] for e in a["train"])


def test_idk_answers_file_and_errors(tmp_path):
    from alignkit.data.idk import load_idk_answers
    from alignkit.errors import DataError

    good = tmp_path / "idk.jsonl"
    good.write_text('{"text": "No idea."}\n{"text": "Cannot say."}\n')
    assert load_idk_answers(str(good)) == ("No idea.", "Cannot say.")
    bad = tmp_path / "bad.json"
    bad.write_text('[""]')
    with pytest.raises(DataError, match="no usable answers"):
        load_idk_answers(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        load_idk_answers(str(tmp_path / "missing.jsonl"))


def test_rmu_hidden_states_and_trainable_parameters(tmp_path):
    """The hook hands over layer-ℓ outputs equal to HF's output_hidden_states[ℓ + 1]; optim.trainable freezes the
    rest, so only the named weights move."""
    from contextlib import nullcontext

    from alignkit.kinds.forget import collate as collate_forget
    from alignkit.models.loading import load_causal_lm

    recipe = _recipe(tmp_path, "rmu", **RMU_TINY)
    encoded, _ = prepare_data(recipe)
    model = load_causal_lm("builtin:tiny-llama").eval()
    batch = collate_forget([{**e, "index": i} for i, e in enumerate(encoded["train"][:2])], encoded["pad_id"])
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    from alignkit.engine.loop import LiveReference

    reference = LiveReference(load_causal_lm("builtin:tiny-llama"), nullcontext())
    # layer 0's output is HF's hidden_states[1] (the last entry of output_hidden_states is after the final norm)
    params = get_objective("rmu").make_params({**RMU_TINY, "layer": 0})
    with torch.no_grad():
        inputs = objective_inputs(get_objective("rmu"), model, batch, nullcontext(), reference,
                                  retain_batch_for(data, 2, 0), params)
        hf = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(inputs["hidden"], hf.hidden_states[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(inputs["retain_hidden"], inputs["ref_retain_hidden"], atol=1e-6, rtol=0)

    pattern = r"layers\.1\.mlp\.down_proj\.weight"
    trained = _recipe(tmp_path / "run", "rmu", **RMU_TINY)
    trained.optim.trainable = [pattern]
    before = {n: p.detach().clone() for n, p in load_causal_lm("builtin:tiny-llama").named_parameters()}
    policy = load_causal_lm("builtin:tiny-llama")
    train(trained, data, tmp_path / "run", model=policy)
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"model.layers.1.mlp.down_proj.weight"}
    trained.optim.trainable = ["no_such_parameter"]
    with pytest.raises(Exception, match="matches no parameter"):
        train(trained, data, tmp_path / "run2", model=load_causal_lm("builtin:tiny-llama"))
