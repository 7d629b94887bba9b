"""The Hugging Face rollout engine on tiny-llama: n samples, seeds, greedy, stop strings, per-token log-probs that
match a direct forward, and weight sync that makes its log-probs equal the trainer's after a real training step."""
import pytest
import torch

from alignkit.rollout.hf import HFEngine
from alignkit.rollout.types import SamplingParams

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], "The capital of France is"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(str(tiny_model_dir), batch_size=4)


def test_n_samples_shapes_and_finish_reasons(engine):
    out = engine.generate(PROMPTS, SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=0))
    assert [(c.prompt_index, c.sample_index) for c in out] == [(i, k) for i in range(2) for k in range(3)]
    for c in out:
        assert 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason == ("stop" if c.token_ids[-1] in engine.eos_ids else "length")


def test_seeded_sampling_is_deterministic_and_greedy_is_argmax(engine):
    s = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=7)
    a, b = engine.generate(PROMPTS, s), engine.generate(PROMPTS, s)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    other = engine.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=8))
    assert [c.token_ids for c in a] != [c.token_ids for c in other]
    greedy = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.0, max_tokens=6))
    assert greedy[0].token_ids == greedy[1].token_ids
    # greedy picks the most likely token: its log-prob is the max of the step's distribution
    tok = engine.tokenizer
    prompt_ids = tok(engine.tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=False),
                     add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + greedy[0].token_ids])
    with torch.no_grad():
        logps = engine.model(ids).logits[0, len(prompt_ids) - 1:-1].float().log_softmax(-1)
    direct = logps.gather(-1, torch.tensor(greedy[0].token_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(greedy[0].logprobs), direct, atol=1e-4, rtol=0)
    assert torch.equal(logps.argmax(-1), torch.tensor(greedy[0].token_ids))


def test_stop_strings_cut_the_text(engine):
    free = engine.generate(PROMPTS[1:], SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert len(free.text) > 3
    stop = free.text.strip()[1:3]  # a piece that the greedy text contains
    cut = engine.generate(PROMPTS[1:], SamplingParams(temperature=0.0, max_tokens=12, stop=[stop]))[0]
    assert stop not in cut.text and free.text.startswith(cut.text) and cut.finish_reason == "stop"
    assert len(cut.token_ids) <= len(free.token_ids)


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="n and max_tokens"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_weight_sync_matches_the_trainer_after_a_training_step(tmp_path, tiny_model_dir, engine):
    """Train one real step, push the trainer's weights: the engine's log-probs of fixed completions equal the
    trainer's sequence log-probs (fp32 CPU, 1e-4)."""
    from contextlib import nullcontext

    from alignkit.config import recipe_from_dict
    from alignkit.data.encode import collate_sft
    from alignkit.engine.loop import TrainData, train
    from alignkit.models.loading import load_causal_lm
    from alignkit.models.logps import forward_batch as _forward
    from alignkit.pipelines.preference import prepare_data

    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path)}, "model": {"path": str(tiny_model_dir)},
        "data": {"train": "builtin:fictitious_authors", "train_split": "forget01", "max_length": 96,
                 "max_prompt_length": 64},
        "objective": {"name": "sft"}, "optim": {"lr": 1e-2},
        "trainer": {"backend": "torch", "max_steps": 1, "micro_batch_size": 4, "progress_bar": False},
        "eval": {"generate": False}})
    encoded, _ = prepare_data(recipe)
    policy = load_causal_lm(str(tiny_model_dir))
    train(recipe, TrainData(encoded["kind"], encoded["train"], [], encoded["pad_id"]), tmp_path, model=policy)
    prompts = [[{"role": "user", "content": q}] for q in ("Where was Orrin Pendry born?", "Hi", "Name a city.")]
    completions = ["Orrin Pendry was born in Oslo.", "Hello there.", "Lisbon."]
    from alignkit.data.encode import EncodeSettings, encode_sft

    rows = [{**encode_sft(engine.tokenizer, {"prompt": p, "completion": [{"role": "assistant", "content": c}]},
                          EncodeSettings(96, 64)), "index": i} for i, (p, c) in enumerate(zip(prompts, completions))]
    with torch.no_grad():
        out = _forward(policy.eval(), collate_sft(rows, encoded["pad_id"]), nullcontext())
    # summed in float64 on both sides: the engine's per-token values are the trainer's, only a fp32 sum of ~12
    # terms of ~-10 could differ (by up to ~5e-5)
    trainer_logps = (out["token_logps"].double() * out["token_mask"]).sum(-1)
    before = torch.tensor([sum(x) for x in engine.score(prompts, completions)], dtype=torch.float64)
    assert (before - trainer_logps).abs().max() > 1e-2  # the step moved the weights
    version = engine.update_weights({k: v.detach().clone() for k, v in policy.state_dict().items()})
    after = torch.tensor([sum(x) for x in engine.score(prompts, completions)], dtype=torch.float64)
    torch.testing.assert_close(after, trainer_logps, atol=1e-4, rtol=0)
    assert version == engine.health()["weights_version"] >= 1
    with pytest.raises(ValueError, match="does not match"):
        engine.update_weights({"not.a.weight": torch.zeros(1)})
