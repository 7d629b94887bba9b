"""Per-step negatives (spec §7): Q̂, advantages, critical step, BoK, AWR weights (§7.6 values), the splitter, the
`weighted` kind and `awr` loss, prefix continuation from token ids, and the mining stages with a scripted pool:
every prefix of every negative in one generate call, early exit, the stage cache, the pit switch, both pair forms,
the controls' rows."""
import json
import math

import pytest
import torch

from alignkit.config import load_recipe
from alignkit.data.chain_arith import chain_arith, solution
from alignkit.data.encode import EncodeSettings
from alignkit.kinds import get_kind
from alignkit.objectives import get_objective
from alignkit.rollout.steps import advantages, bok_success, critical_step, has_pit, q_hat, split_steps, step_weights
from alignkit.rollout.types import Completion


def test_spec_numeric_checks():
    qs = [0.6, 0.4, 0.0, 0.0]
    assert advantages(0.6, qs) == pytest.approx([0.0, -0.2, -0.4, 0.0], abs=1e-12)
    assert critical_step(qs) == 2  # rejected = steps 0..2
    assert bok_success(0.2, 5) == pytest.approx(0.6723, abs=5e-5)
    assert critical_step([0.2, 0.0, 0.4, 0.0]) == 1  # the first of tied minima
    assert has_pit([0.2, 0.0]) and not has_pit([0.2, 0.4]) and not has_pit([])


def test_q_hat_and_weights():
    assert q_hat([False, True, False, False, False], k=5) == 1.0  # best-of-5: any success
    assert q_hat([False] * 5 + [True] + [False] * 4, k=5) == 0.5  # M = 2 groups, one succeeds
    assert q_hat([True, False, False, False]) == 0.25  # per-rollout rate without k
    with pytest.raises(ValueError):
        q_hat([True, False, True], k=2)
    assert step_weights([0.0, -0.5, 1.0, 10.0], beta=0.5) == pytest.approx([1.0, math.exp(-1), math.exp(2), 20.0])


def test_prefix_tokens_and_line_to_step(tokenizer):
    from alignkit.data.encode import prefix_token_ids
    from alignkit.rollout.steps import step_of_line

    text = "7 + 12 = 19\n19 * 3 = 57\nAnswer: 57"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for prefix in ("", "7 + 12 = 19\n", "7 + 12 = 19\n19 * 3 = 57\n", "7 + 12 = 1"):
        got = prefix_token_ids(tokenizer, ids, prefix)
        assert tokenizer.decode(got) == prefix
        k = max(len(got) - 1, 0)
        assert got[:k] == ids[:k]  # the answer's own tokens (the last may be re-tokenised at a cut)
    assert prefix_token_ids(tokenizer, ids, text) == ids
    steps = split_steps("\n7 + 12 = 19\n\n19 * 3 = 57\nAnswer: 57")
    assert steps[0] == "\n" and [step_of_line(steps, i) for i in range(4)] == [1, 2, 3, 3]


def test_split_steps_round_trips():
    text = "7 + 12 = 19\n\n19 * 3 = 57\nAnswer: 57"
    steps = split_steps(text)
    assert steps == ["7 + 12 = 19\n\n", "19 * 3 = 57\n", "Answer: 57"] and "".join(steps) == text
    assert split_steps("a. b. c", pattern=r"\.\s*") == ["a. ", "b. ", "c"]
    assert split_steps("one line") == ["one line"]


def test_weighted_kind_and_awr_loss(tiny_model_dir):
    from alignkit.models.loading import load_tokenizer

    tok, kind = load_tokenizer(tiny_model_dir), get_kind("weighted")
    row = kind.normalize({"prompt": [{"role": "user", "content": "Q"}], "steps": ["1 + 1 = 2\n", "Answer: 2"],
                          "weights": [0.5, 2.0]}, "r")
    example = kind.encode(tok, row, EncodeSettings(128, 64))
    # independently: decode the response tokens one by one; a token starting inside the first step gets its weight
    seen, want = 0, []
    for t in example["completion_ids"]:
        want.append(0.5 if seen < len("1 + 1 = 2\n") else 2.0)
        seen += len(tok.decode([t]))
    assert example["token_weights"] == want and 0.5 in want and 2.0 in want
    assert len(example["token_weights"]) == len(example["completion_ids"])
    batch = kind.collate([{**example, "index": 0}], tok.pad_token_id)
    assert batch["token_weights"].shape == batch["labels"].shape
    assert ((batch["token_weights"] > 0) == (batch["labels"] != -100)).all()  # weights sit on the response tokens
    awr = get_objective("awr")
    inputs = {"token_logps": torch.tensor([[-1.0, -2.0, 0.0]]), "token_mask": torch.tensor([[1.0, 1.0, 0.0]]),
              "token_weights": torch.tensor([[2.0, 0.5, 3.0]])}
    assert awr.loss_fn(inputs, awr.make_params({}))[0].item() == pytest.approx((2 * 1 + 0.5 * 2) / 2)
    with pytest.raises(Exception, match="one number >= 0 per step"):
        kind.normalize({"prompt": "Q", "steps": ["a"], "weights": [1.0, 2.0]}, "r")


def test_a_prefix_is_continued_from_its_token_ids(tiny_model_dir):
    """Greedy decoding from prompt + the first k generated tokens gives exactly the rest of the full greedy answer:
    the engine neither closes the turn nor re-renders the prompt."""
    from alignkit.data.encode import continuation_prompt, prompt_token_ids
    from alignkit.rollout.hf import HFEngine
    from alignkit.rollout.types import SamplingParams

    engine = HFEngine(tiny_model_dir)
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    greedy = SamplingParams(temperature=0, max_tokens=12)
    [full] = engine.generate([prompt], greedy)
    base = prompt_token_ids(engine.tokenizer, prompt)
    for k in (1, 5):
        [rest] = engine.generate([{"prompt_ids": base + full.token_ids[:k]}], SamplingParams(temperature=0,
                                                                                            max_tokens=12 - k))
        assert rest.token_ids == full.token_ids[k:]
    prefix = engine.tokenizer.decode(full.token_ids[:5])
    assert continuation_prompt(engine.tokenizer, prompt, prefix)["prompt_ids"][:len(base)] == base
    # two prompts of different lengths in one batch (left padding) continue as they do alone
    both = engine.generate([{"prompt_ids": base + full.token_ids[:1]}, prompt], greedy)
    assert both[1].token_ids == full.token_ids and both[0].token_ids[:11] == full.token_ids[1:]


class ScriptedPool:
    """Answers every continuation prompt with `reply(prompt_ids)`; counts calls and prompts."""

    def __init__(self, reply):
        self.reply, self.calls = reply, []

    def generate(self, prompts, sampling):
        self.calls.append(len(prompts))
        return [Completion(i, k, self.reply(p), [1], [0.0], "stop") for i, p in enumerate(prompts)
                for k in range(sampling.n)]


def _recipe(tmp_path, **steps):
    overrides = [f"steps.{k}={v}" for k, v in steps.items()]
    return load_recipe("recipes/step_negatives/tiny_debug.yaml", overrides)


def test_value_stage_batches_every_prefix_and_caches(tiny_model_dir, tmp_path, monkeypatch):
    from alignkit.data.sources import behaviour_scorer
    from alignkit.models.loading import load_tokenizer
    from alignkit.pipelines.step_negatives import value_stage

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))  # the stage cache starts empty
    tok = load_tokenizer(tiny_model_dir)
    problems = chain_arith("train", size=2)
    scorer = behaviour_scorer("builtin:chain_arith")
    gold = [solution(p["start"], [tuple(o) for o in p["ops"]]) for p in problems]
    # a negative that goes wrong at its second line: the rollouts continue right only before that line
    bad = []
    for g in gold:
        lines = g.splitlines(keepends=True)
        lines[1] = lines[1].replace("=", "= 1", 1)  # a wrong result
        bad.append("".join(lines))
    samples = [{"problem": i, "sample": 0, "text": b, "token_ids": [], "correct": False} for i, b in enumerate(bad)]

    def reply(prompt):  # continue correctly when the prefix is on the gold path, else give up
        text = tok.decode(prompt["prompt_ids"])
        p = next(i for i, row in enumerate(problems) if row["prompt"][0]["content"] in text)
        answer = text[text.rindex("assistant\n") + len("assistant\n"):]  # the prefix being continued
        return gold[p][len(answer):] if gold[p].startswith(answer) else "no idea"

    recipe = _recipe(tmp_path, k=2)
    pool = ScriptedPool(reply)
    values, stats = value_stage(recipe, tiny_model_dir, problems, samples, scorer, pool)
    assert pool.calls == [sum(len(split_steps(b)) for b in bad)]  # all prefixes, one call
    for v in values:
        assert v["q0"] == 1.0 and v["qs"][0] == 1.0 and v["qs"][1] == 0.0 and v["critical"] == 1 and v["pit"]
        assert v["oracle"] == 1  # the checker agrees: MC found the true first error
        assert v["continuations"][1] is not None  # a right continuation of the step before the pit
    again = ScriptedPool(reply)
    assert value_stage(recipe, tiny_model_dir, problems, samples, scorer, again)[0] == values and again.calls == []
    early = ScriptedPool(reply)
    values2, _ = value_stage(_recipe(tmp_path, k=2, early_exit="true"), tiny_model_dir, problems, samples, scorer,
                             early)
    assert len(early.calls) == 3 and sum(early.calls) < pool.calls[0]  # depth by depth, hopeless ones stop
    assert [v["critical"] for v in values2] == [1, 1]


def test_rows_of_each_method(tmp_path):
    from alignkit.pipelines.step_negatives import build_rows

    problems = chain_arith("train", size=3)
    gold = [solution(p["start"], [tuple(o) for o in p["ops"]]) for p in problems]
    samples = [{"problem": 0, "sample": 0, "text": gold[0], "correct": True},
               {"problem": 0, "sample": 1, "text": "1 + 1 = 3\nAnswer: 3", "correct": False},
               {"problem": 1, "sample": 0, "text": "2 + 2 = 5\nAnswer: 5", "correct": False}]
    steps = ["a\n", "b\n", "Answer: 1"]
    values = [{"problem": 0, "steps": steps, "qs": [0.5, 0.0, 0.0], "advantages": [-0.5, -0.5, 0.0], "critical": 1,
               "pit": True, "oracle": 0, "continuations": [gold[0], "c\nAnswer: 2", None]},
              {"problem": 1, "steps": steps, "qs": [0.5, 0.5, 0.5], "advantages": [0.0, 0.0, 0.0], "critical": 0,
               "pit": False, "oracle": 2, "continuations": [None, None, None]}]

    def rows(**steps_keys):  # (the tiny recipe keeps pit-less negatives; the default drops them)
        return build_rows(_recipe(tmp_path, **{"keep_no_pit": "false", **steps_keys}), problems, samples, values)

    pairs, stats = rows(method="step_dpo")
    assert len(pairs) == 1 and stats["kept"] == 1 and stats["with_pit"] == 1  # the pit-less negative is dropped
    assert pairs[0]["chosen"][0]["content"] == gold[0] and pairs[0]["rejected"][0]["content"] == "a\nb"
    assert stats["mc_finds_true_first_error"] == 0.0
    assert len(rows(method="step_dpo", keep_no_pit="true")[0]) == 2
    oracle, _ = rows(method="step_dpo", critical="oracle")
    assert [p["rejected"][0]["content"] for p in oracle] == ["a", "a\nb\nAnswer: 1"]
    shared, _ = rows(method="step_dpo", pair_form="shared_prefix")
    assert (shared[0]["prompt_prefix"], shared[0]["chosen"], shared[0]["rejected"]) == ("a\n", "c\nAnswer: 2", "b\n")
    awr, _ = rows(method="step_awr")  # the negative up to its critical step, weighted exp(A / 0.5)
    assert awr[0]["steps"] == ["a\n", "b\n"] and awr[0]["weights"] == pytest.approx([math.exp(-1), math.exp(-1)])
    assert awr[1]["weights"] == [1.0] * len(split_steps(gold[0]))
    assert [r["completion"][0]["content"] for r in rows(method="rft")[0]] == [gold[0]]
    full, _ = rows(method="full_dpo")
    assert len(full) == 1 and full[0]["rejected"][0]["content"] == "1 + 1 = 3\nAnswer: 3"
    assert len(rows(method="sft")[0]) == 3
    json.dumps(pairs)  # rows are written as JSONL


def test_a_small_size_trains_with_a_batch_that_fits(tmp_path):
    from alignkit.pipelines.step_negatives import _batch_within

    recipe = _recipe(tmp_path).derive({"trainer.micro_batch_size": 8, "trainer.grad_accum": 2})
    assert _batch_within(recipe, 40) is recipe  # fits: unchanged
    small = _batch_within(recipe, 12)
    assert (small.trainer.micro_batch_size, small.trainer.grad_accum) == (8, 1)
    tiny = _batch_within(recipe, 5)
    assert (tiny.trainer.micro_batch_size, tiny.trainer.grad_accum) == (5, 1)
