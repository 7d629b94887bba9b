"""The one loop on an online source, in one process: a real HF engine generates every round, the exact-answer
verifier scores, rows are built and encoded, the trainer trains `steps_per_round` steps and pushes its weights to the
engine. Checks what the persistent trainer promises: the optimizer lives across rounds, the engine generates with
the last update's weights, and a run stopped mid-round resumes with the same per-step losses."""
import json

import pytest
import torch

from alignkit.config import recipe_from_dict
from alignkit.data.encode import EncodeSettings
from alignkit.engine.loop import RunHooks, TrainData, train
from alignkit.engine.sources import OnlineSource
from alignkit.pipelines.online import validate
from alignkit.rollout.engine import InProcessClient
from alignkit.rollout.rounds import RoundMaker


def _recipe(out, **online):
    return recipe_from_dict({
        "run": {"output_dir": str(out)}, "model": {"path": "builtin:tiny-llama"},
        "data": {"max_length": 64, "max_prompt_length": 48},
        "objective": {"name": "pmpo", "beta": 0.5}, "optim": {"lr": 1e-3},
        "trainer": {"backend": "torch", "max_steps": 6, "micro_batch_size": 2, "progress_bar": False},
        "online": {"rounds": 3, "steps_per_round": 2, "prompts": "builtin:concise_arithmetic",
                   "prompts_per_round": 2, "samples_per_prompt": 2, "max_new_tokens": 6, "eval_size": 2,
                   "rows": "unpaired_by_score", **online}})


def _run(recipe, out, engine, resume_dir=None, checkpoints=None):
    payload = validate(recipe)
    d = recipe.data
    maker = RoundMaker(InProcessClient(engine), payload["prompt_rows"], payload["eval_rows"], "unpaired",
                       recipe.online, recipe.model.path, EncodeSettings(d.max_length, d.max_prompt_length),
                       scorer=payload["scorer"])
    o, t = recipe.online, recipe.trainer
    source = OnlineSource(make_rows=maker.make_rows, push=maker.push, evaluate=maker.evaluate,
                          steps_per_round=o.steps_per_round, seed=0, micro=t.micro_batch_size, accum=t.grad_accum)
    hooks = RunHooks(resume_dir=resume_dir, source=source)
    if checkpoints is not None:
        hooks.save_checkpoint = lambda step, metrics, write: write(checkpoints / f"step_{step}")
    return train(recipe, TrainData("unpaired", [], [], engine.tokenizer.pad_token_id), out, hooks=hooks)


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def engine(tiny_model_dir):
    from alignkit.rollout.hf import HFEngine

    return HFEngine(tiny_model_dir)


def test_online_rounds_on_one_trainer(tmp_path, engine, tiny_model_dir):
    steps = []

    def record(optimizer, _args, _kwargs):
        param = optimizer.param_groups[0]["params"][0]
        steps.append(int(optimizer.state[param]["step"]) if param in optimizer.state else 0)

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        _run(_recipe(tmp_path / "run"), tmp_path / "run", engine)
    finally:
        handle.remove()
    assert steps == [0, 1, 2, 3, 4, 5]  # one optimizer for the whole run: Adam's moments carry across rounds
    records = _records(tmp_path / "run")
    assert [r["online/round"] for r in records if "online/round" in r] == [0, 1, 2]
    assert [r["online/weights_version"] for r in records if "online/weights_version" in r] == [1, 2, 3]
    assert all("online/eval_correct" in r for r in records if "online/weights_version" in r)
    assert records[0]["step"] == 0 and "online/eval_correct" in records[0]  # the starting policy, before round 0
    # the engine holds the last update's weights: its log-probs are the trainer's final model's
    from alignkit.data.encode import collate_sft, encode_sft
    from alignkit.models.loading import load_causal_lm
    from alignkit.models.logps import forward_batch as _forward

    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi"}]]
    answers = ["The answer is 5.", "Hello."]
    final = load_causal_lm(str(tmp_path / "run" / "final")).eval()
    rows = [{**encode_sft(engine.tokenizer, {"prompt": p, "completion": [{"role": "assistant", "content": a}]},
                          EncodeSettings(64, 48)), "index": i} for i, (p, a) in enumerate(zip(prompts, answers))]
    with torch.no_grad():
        out = _forward(final, collate_sft(rows, engine.tokenizer.pad_token_id), torch.autocast("cpu", enabled=False))
    trainer_logps = (out["token_logps"].double() * out["token_mask"]).sum(-1)
    engine_logps = torch.tensor([sum(x) for x in engine.score(prompts, answers)], dtype=torch.float64)
    # the same weights and the same per-token values; only summation order differs (float64 on both sides)
    torch.testing.assert_close(engine_logps, trainer_logps, atol=1e-4, rtol=0)


@pytest.mark.parametrize("stop", [2, 3])  # after round 0's push (the next step generates), and mid-round 1
def test_stopped_mid_round_resumes_with_the_same_losses(tmp_path, tiny_model_dir, stop):
    from alignkit.rollout.hf import HFEngine

    full = tmp_path / "full"
    recipe = _recipe(full)
    recipe.trainer.checkpoint_every = 1
    _run(recipe, full, HFEngine(tiny_model_dir), checkpoints=tmp_path / "ckpt")
    # stopped after step `stop`; resumed with a fresh engine, which holds the starting weights: the checkpoint's
    # weights must reach it before it generates the next round
    part = tmp_path / "part"
    part.mkdir()
    (part / "metrics.jsonl").write_text("".join(
        x + "\n" for x in (full / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] <= stop))
    _run(_recipe(part), part, HFEngine(tiny_model_dir), resume_dir=tmp_path / "ckpt" / f"step_{stop}")
    a = {r["step"]: r for r in _records(full)}
    b = {r["step"]: r for r in _records(part)}
    assert sorted(a) == sorted(b)
    for step in range(stop + 1, 7):  # same rows (from the checkpoint or regenerated by the same weights), same ops
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], abs=1e-5), step


def test_colocated_engines_sleep_while_the_trainer_trains():
    """rollout.colocate (vLLM on the trainer's GPUs): after generating and scoring a round the engines sleep, and
    they wake right before the push (the engine client is a stand-in: no GPU here)."""
    from alignkit.rollout.types import Completion

    calls = []

    class Client:
        def generate(self, prompts, sampling):
            calls.append("generate")
            return [Completion(i, 0, "The answer is 4.", [1], [-0.1], "stop") for i in range(len(prompts))]

        def sleep(self):
            calls.append("sleep")

        def wake(self):
            calls.append("wake")

        def update_weights(self, weights, via=None):
            calls.append("push")
            return {"version": 1}

    recipe = _recipe("unused")
    from alignkit.models.loading import load_tokenizer

    maker = RoundMaker(Client(), [{"prompt": "2+2?", "answer": 4}], [], "unpaired", recipe.online,
                       "builtin:tiny-llama", EncodeSettings(64, 48), colocate=True)
    maker._tokenizer = load_tokenizer("builtin:tiny-llama")
    rows, metrics = maker.make_rows(0)
    maker.push({})
    assert calls == ["generate", "sleep", "wake", "push"]
    assert metrics["online/mean_score"] == 1.0 and all(r["label"] for r in rows)
