"""Every tensor reaches the model's device through the one seam (alignkit/device.py), checked on the CPU with
tests/device_check.py: every registered objective (a contract over the registry, not a hand-kept list) trains a step
and evaluates under the check, with each reference mode it uses, and so do generation, reward scoring, the
unlearning suite and the HF rollout engine. A test also shows the check fails when one move is missing. The tests
marked `gpu` run the same paths on CUDA."""
import json

import pytest
import torch

from alignkit.config import recipe_from_dict
from alignkit.engine import loop
from alignkit.engine.loop import TrainData, train
from alignkit.objectives.registry import _REGISTRY, _load_builtin_objectives
from alignkit.pipelines.preference import prepare_data
from tests.device_check import DeviceCheck

_load_builtin_objectives()
OBJECTIVES = sorted(_REGISTRY)
DATA = {  # a built-in source of each record kind
    "pairs": {"train": "builtin:concise_arithmetic", "eval": "builtin:concise_arithmetic"},
    "unpaired": {"train": "builtin:concise_arithmetic", "eval": "builtin:concise_arithmetic"},
    "sft": {"train": "builtin:concise_arithmetic", "eval": "builtin:concise_arithmetic"},
    "forget": {"train": "builtin:fictitious_authors", "train_split": "forget05", "eval": "builtin:fictitious_authors",
               "eval_split": "forget05", "retain": "builtin:fictitious_authors", "retain_split": "retain95",
               "retain_size": 8},
    "reward_pairs": {"train": "builtin:spurious_length", "eval": "builtin:spurious_length"},
}


def _files_of_kinds() -> None:
    """Sources of the kinds no built-in data set holds (feedback, weighted), made from chain_arith rows."""
    import tempfile
    from pathlib import Path

    from alignkit.data.chain_arith import chain_arith
    from alignkit.rollout.steps import split_steps

    folder = Path(tempfile.mkdtemp(prefix="seam-kinds-"))
    rows = chain_arith("train", size=8)
    answers = [r["completion"][0]["content"] for r in rows]
    made = {"feedback": [{"prompt": r["prompt"], "response": a, "feedback": ["Accurate.", ""][i % 2]}
                         for i, (r, a) in enumerate(zip(rows, answers))],
            "weighted": [{"prompt": r["prompt"], "steps": split_steps(a),
                          "weights": ([1.0, 0.5] * 4)[:len(split_steps(a))]} for r, a in zip(rows, answers)]}
    for kind, items in made.items():
        path = folder / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in items))
        DATA[kind] = {"train": str(path), "eval": str(path)}


_files_of_kinds()
PARAMS = {"rmu": {"layer": 1, "steering": 2.0, "alpha": 1.0}}


def recipe_for(tmp_path, name, **sections):
    from alignkit.kinds import get_kind
    from alignkit.models.special_tokens import with_special_tokens

    kind = _REGISTRY[name].kind
    model = with_special_tokens("builtin:tiny-llama", get_kind(kind).special_tokens)  # (FCP's <EF>, </EF>)
    return recipe_from_dict({
        "run": {"output_dir": str(tmp_path)}, "model": {"path": model},
        "data": {**DATA[kind], "train_size": 8, "eval_size": 4, "max_length": 64, "max_prompt_length": 40},
        "objective": {"name": name, **PARAMS.get(name, {})}, "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 1, "micro_batch_size": 2, "progress_bar": False},
        "eval": {"generate": False}, **sections})


def run_checked(recipe, tmp_path) -> DeviceCheck:
    encoded, _ = prepare_data(recipe)
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    with DeviceCheck() as check:
        train(recipe, data, tmp_path)
    return check


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_trains_and_evaluates_through_the_seam(tmp_path, name):
    check = run_checked(recipe_for(tmp_path, name), tmp_path)
    check.assert_clean()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "eval/loss" in records[0] and "train/loss" in records[-1]


@pytest.mark.parametrize("mode", ["live", "precompute"])
def test_both_reference_modes_and_a_separate_reference_model(tmp_path, mode):
    from alignkit.models.loading import resolve_model_path

    recipe = recipe_for(tmp_path, "dpo", reference={"mode": mode, "path": resolve_model_path("builtin:tiny-llama")})
    run_checked(recipe, tmp_path).assert_clean()


def test_the_check_catches_a_missing_move(tmp_path, monkeypatch):
    """Without the seam on the retain batches (one missing `place`), the check fails and says where."""
    real = loop.retain_batch_for
    monkeypatch.setattr(loop, "retain_batch_for", lambda data, count, position, place=None: real(data, count,
                                                                                                  position))
    check = run_checked(recipe_for(tmp_path, "npo_rt"), tmp_path)
    with pytest.raises(AssertionError, match="mix host and device tensors"):
        check.assert_clean()
    assert any("alignkit.kinds.forget" in v for v in check.violations)


def test_the_check_catches_an_unplaced_reference_table(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.PrecomputedReference, "placed", lambda self, place: self)
    check = run_checked(recipe_for(tmp_path, "dpo"), tmp_path)
    with pytest.raises(AssertionError, match="mix host and device tensors"):
        check.assert_clean()


def generation_reward_unlearning_engine():
    """Generation, reward scoring, the unlearning suite and the HF engine on tiny-llama; returns what they made."""
    from alignkit.evaluation.generation import generate_greedy
    from alignkit.evaluation.reward import RewardScorer
    from alignkit.evaluation.unlearning import evaluate_model
    from alignkit.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
    from alignkit.rollout.hf import HFEngine
    from alignkit.rollout.types import SamplingParams

    path = resolve_model_path("builtin:tiny-llama")
    item = {"question": "Who wrote Ash?", "answer": "Mara Vell", "paraphrased_answer": "Vell",
            "perturbed_answers": ["Tom Reed", "Ann Lee"]}
    texts, _ = generate_greedy(path, ["2+2=", [{"role": "user", "content": "hi"}]], 4, 2)
    rewards, _ = RewardScorer(path, batch_size=2).score(["a", "b", "c"], ["x", "y y", "z"])
    metrics, _ = evaluate_model(load_causal_lm(path), load_tokenizer(path),
                                {"forget": [item], "retain": [item], "holdout": [item]}, max_new_tokens=4)
    engine = HFEngine(path, batch_size=2)
    completions = engine.generate(["2+2="], SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=0, stop=["\n"]))
    return texts, rewards, metrics, completions, engine.score(["2+2="], ["4"])


def test_generation_reward_scoring_unlearning_suite_and_engine_through_the_seam():
    with DeviceCheck() as check:
        texts, rewards, metrics, completions, scored = generation_reward_unlearning_engine()
    check.assert_clean()
    assert len(texts) == 2 and len(rewards) == 3 and "forget/rouge" in metrics
    assert len(completions) == 2 and len(scored[0]) >= 1


@pytest.mark.parametrize("module", ["alignkit.evaluation.generation", "alignkit.evaluation.reward",
                                    "alignkit.evaluation.unlearning", "alignkit.rollout.hf", "alignkit.models.logps"])
def test_the_check_catches_a_missing_move_in_each_evaluation_path(module, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module(module), "place", lambda obj, device: obj)  # the move left out
    with DeviceCheck() as check:
        generation_reward_unlearning_engine()
    assert check.violations and any(module in v for v in check.violations), check.violations[:1]


# ------------------------------------------------------------------------------------------------------- on CUDA
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", ["dpo", "pmpo", "npo_rt", "rmu", "causal_rm", "sft"])
def test_objectives_train_on_cuda(tmp_path, name):
    recipe = recipe_for(tmp_path, name, cluster={"use_gpu": True})
    encoded, _ = prepare_data(recipe)
    data = TrainData(encoded["kind"], encoded["train"], encoded["eval"], encoded["pad_id"], encoded["retain"])
    train(recipe, data, tmp_path)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in records if "train/loss" in r)
