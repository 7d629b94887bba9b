"""Feedback-conditional policies (spec §5): the prompt format, the fcp loss (§5.6 values), the four-section critique
parser and the reference code's failure rules (scripted engines), the built-in chain critic against the exact
checker, the condition pool, the offline and bootstrapping row builders, relabelling that keeps the response's
token ids, and `<EF>`/`</EF>` added with mean-resized embeddings."""
import json
from pathlib import Path

import pytest
import torch

from alignkit.data.chain_arith import chain_arith, check, solution
from alignkit.data.encode import EncodeSettings
from alignkit.errors import DataError, RecipeError
from alignkit.kinds import get_kind
from alignkit.kinds.feedback import EF_END, EF_START, FCP_SYSTEM, condition_pool, fcp_prompt
from alignkit.objectives import get_objective
from alignkit.rollout.builders import conditioned_prompts, fcp_offline, fcp_relabel, load_conditions
from alignkit.rollout.feedback import ChainCritic, Critique, Feedback, parse_critique
from alignkit.rollout.types import Completion

SPEC_CRITIQUE = ("### User-style feedback: ok\n### Analysis along several dimensions: fine\n"
                 "### High-level summary: Correct.\n### Score (0-10): 8")


def test_prompt_format_is_exact():
    messages = fcp_prompt("What is 2+2?", "Great job.")
    assert messages == [{"role": "system", "content": FCP_SYSTEM},
                        {"role": "user", "content": "<EF>Great job.</EF>What is 2+2?"}]
    # conversational questions: the last user turn is conditioned, a row's own system message is kept
    own = fcp_prompt([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Q"}], "")
    assert own == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "<EF></EF>Q"}]


def test_fcp_loss_is_the_token_mean_nll():
    fcp = get_objective("fcp")
    assert fcp.kind == "feedback" and fcp.reference == "none"
    one = {"token_logps": torch.tensor([[-1.0, -2.0, -3.0]]), "token_mask": torch.ones(1, 3)}
    assert fcp.loss_fn(one, fcp.make_params({}))[0].item() == pytest.approx(2.0, abs=1e-6)
    two = {"token_logps": torch.tensor([[-1.0, 0.0, 0.0], [-2.0, -3.0, -4.0]]),
           "token_mask": torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])}
    assert fcp.loss_fn(two, fcp.make_params({}))[0].item() == pytest.approx(2.5, abs=1e-6)  # not (1 + 3) / 2


def test_critique_parser():
    p = parse_critique(SPEC_CRITIQUE)
    assert p["ok"] and p["summary"] == "Correct." and p["score_value"] == 8 and p["user"] == "ok"
    missing = parse_critique(SPEC_CRITIQUE.rsplit("###", 1)[0])
    assert not missing["ok"] and missing["score_value"] is None and missing["summary"] == "Correct."
    assert not parse_critique(SPEC_CRITIQUE.replace(": 8", ": eight"))["ok"]


class Scripted:
    """Replies per attempt: attempt k answers every prompt with replies[k] (or raises it)."""

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def generate(self, prompts, sampling):
        reply = self.replies[min(len(self.calls), len(self.replies) - 1)]
        self.calls.append((len(prompts), sampling.temperature))
        if isinstance(reply, Exception):
            raise reply
        return [Completion(i, 0, reply, [], [], "stop") for i in range(len(prompts))]


ROW = {"prompt": [{"role": "user", "content": "What is 2+2?"}], "answer": 4}


def test_critique_provider_and_its_failure_rules():
    ok = Critique(Scripted([SPEC_CRITIQUE]))(ROW, "4")
    assert (ok.score, ok.text, ok.details["attempts"]) == (0.8, "Correct.", 1)
    assert Critique(Scripted([SPEC_CRITIQUE]), critique_type="user")(ROW, "4").text == "ok"
    # an unparsable reply is asked again (sampled), and a later good one is taken
    engine = Scripted(["garbage", SPEC_CRITIQUE])
    retried = Critique(engine)(ROW, "4")
    assert (retried.score, retried.details["attempts"]) == (0.8, 2) and engine.calls == [(1, 0.0), (1, 1.0)]
    # after the last retry the partly parsed critique is kept; a missing or non-integer score gives 0.5
    partial = Scripted([SPEC_CRITIQUE.replace(": 8", ": eight")])
    kept = Critique(partial, retries=2)(ROW, "4")
    assert (kept.score, kept.text, kept.details["parsed"], len(partial.calls)) == (0.5, "Correct.", False, 3)
    # only an engine error gives an empty critique (still a row: trained under <EF></EF>)
    failed = Critique(Scripted([RuntimeError("engine died")])).batch([ROW, ROW], ["4", "5"])
    assert [(f.score, f.text) for f in failed] == [(0.5, ""), (0.5, "")] and "engine died" in failed[0].details["error"]
    # a failed retry keeps what was parsed (the good critiques are not blanked)
    mixed = Critique(Scripted([SPEC_CRITIQUE.replace(": 8", ": eight"), RuntimeError("engine died")]))(ROW, "4")
    assert (mixed.score, mixed.text, mixed.details["attempts"]) == (0.5, "Correct.", 1)
    rows = fcp_relabel([ROW], [Completion(0, 0, "4", [19], [0.0], "stop")], failed[:1], conditions=["x"])
    assert rows[0]["feedback"] == "" and get_kind("feedback").normalize(rows[0], "r")["prompt"][1]["content"] \
        .startswith("<EF></EF>")


def _wrong(row, line):
    """The solution with step `line`'s result off by one, carried through the later steps and the answer."""
    from alignkit.data.chain_arith import apply

    value, lines = row["start"], []
    for i, (op, b) in enumerate(row["ops"]):
        new = apply(value, op, b) + (1 if i == line else 0)
        lines.append(f"{value} {op} {b} = {new}")
        value = new
    return "\n".join([*lines, f"Answer: {value}"])


def test_chain_critic_agrees_with_the_checker():
    critic = ChainCritic()
    rows = chain_arith("test", size=40)
    for i, row in enumerate(rows):
        right = solution(row["start"], [tuple(o) for o in row["ops"]])
        f = critic(row, right)
        assert f.score == 1.0 and f.details["correct"] and f.text in ChainCritic.SUMMARY["right"]
        line = i % len(row["ops"])
        bad = _wrong(row, line)
        verdict = check(row, bad)
        g = critic(row, bad)
        assert not g.details["correct"] and g.details["first_wrong_step"] == verdict.first_wrong_step == line
        assert g.score <= 0.4 and f"step {line + 1} " in g.details["analysis"]
        assert "step" not in g.text and "line" not in g.text  # the summary does not say where
        assert critic(row, "I do not know.").score == 0.0
    # the wording varies across responses (conditions vary as an LLM's would) and is stable for one response
    texts = {critic(r, solution(r["start"], [tuple(o) for o in r["ops"]])).text for r in rows}
    assert len(texts) >= 4
    assert critic(rows[0], "x").text == critic(rows[0], "x").text


def test_condition_pool_and_loading(tmp_path):
    rows = [{"feedback": "Accurate and rigorous.", "score": 1.0}, {"feedback": "Concise and correct.", "score": 1.0},
            {"feedback": "Careless.", "score": 0.2}, {"feedback": "", "score": 1.0},
            {"feedback": "Accurate and rigorous.", "score": 0.9}, {"feedback": "Okay.", "score": None}]
    assert condition_pool(rows, 0.8) == ["Accurate and rigorous."]  # no length words, no duplicates, no empties
    assert condition_pool(rows, 0.3, positive=False) == ["Careless."]
    run = tmp_path / "run"
    (run / "rows").mkdir(parents=True)
    (run / "rows" / "generation_0000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_conditions(str(run)) == ["Accurate and rigorous."]
    assert load_conditions(["a", "b"]) == ["a", "b"]
    with pytest.raises(RecipeError, match="neither a JSONL"):
        load_conditions(str(tmp_path / "nothing"))
    with pytest.raises(RecipeError, match="no feedback scoring"):
        load_conditions(str(run), min_score=1.5)


def test_conditioned_prompts_share_one_condition_per_prompt():
    rows = chain_arith("test", size=8)
    pool = [f"condition {i}" for i in range(5)]
    a = conditioned_prompts(rows, "generate", 3, conditions=pool)
    assert all(p[1]["content"].startswith("<EF>condition ") for p in a)
    assert a == conditioned_prompts(rows, "generate", 3, conditions=pool)  # seeded
    assert a != conditioned_prompts(rows, "generate", 4, conditions=pool)  # another round, other draws
    # the held-out evaluation: one fixed condition per question, whatever the order
    e = conditioned_prompts(rows, "evaluate", 0, conditions=pool)
    assert e[::-1] == conditioned_prompts(rows[::-1], "evaluate", 9, conditions=pool)
    assert conditioned_prompts(rows[:1], "evaluate", 0)[0][1]["content"].startswith("<EF></EF>")


def test_offline_builder_drops_one_sided_prompts():
    rows = [{"prompt": f"q{i}", "answer": i} for i in range(3)]
    verdicts = {0: [True, False, True], 1: [True, True, True], 2: [False, False, False]}
    completions, feedback = [], []
    for p, vs in verdicts.items():
        for k, v in enumerate(vs):
            completions.append(Completion(p, k, f"r{p}{k}", [p, k], [0.0, 0.0], "stop"))
            feedback.append(Feedback(1.0 if v else 0.2, "good" if v else "bad", "t", {"correct": v}))
    out = fcp_offline(rows, completions, feedback)
    assert [(r["prompt"], r["response"], r["feedback"], r["response_ids"]) for r in out] == [
        ("q0", "r00", "good", [0, 0]), ("q0", "r01", "bad", [0, 1])]


def test_relabelling_keeps_the_response_token_ids(tiny_model_dir, tmp_path):
    from alignkit.models.loading import load_tokenizer
    from alignkit.models.special_tokens import with_special_tokens

    path = with_special_tokens(tiny_model_dir, (EF_START, EF_END), seed=0)
    tok = load_tokenizer(path)
    kind = get_kind("feedback")
    generated = tok("7 + 12 = 19\nAnswer: 19", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    s = EncodeSettings(256, 128)
    out = [kind.encode(tok, kind.normalize({"prompt": [{"role": "user", "content": "Q?"}], "response": "x",
                                            "response_ids": generated, "feedback": fb}, "r"), s)
           for fb in ("Accurate.", "Careless and wrong.")]
    assert out[0]["completion_ids"] == out[1]["completion_ids"] == generated
    ef = tok.convert_tokens_to_ids(EF_START)
    assert ef in out[0]["prompt_ids"] and out[0]["prompt_ids"] != out[1]["prompt_ids"]
    with pytest.raises(DataError, match="no <EF> token"):
        kind.encode(load_tokenizer(tiny_model_dir), kind.normalize({"prompt": "Q", "response": "a",
                                                                    "feedback": ""}, "r"), s)
    with pytest.raises(DataError, match="`feedback` must be a string"):
        kind.normalize({"prompt": "Q", "response": "a"}, "row 3")


def test_special_tokens_are_added_with_mean_resized_embeddings(tiny_model_dir, tmp_path):
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.models.special_tokens import missing_tokens, with_special_tokens

    # a model whose embeddings sit far from the origin: mean-resized rows land beside them, a standard
    # initialisation (normal around 0) would not
    shifted = tmp_path / "shifted"
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(3.0)
    model.save_pretrained(shifted)
    load_tokenizer(tiny_model_dir).save_pretrained(shifted)
    assert missing_tokens(str(shifted), (EF_START, EF_END)) == [EF_START, EF_END]
    path = with_special_tokens(str(shifted), (EF_START, EF_END), seed=0)
    made = (Path(path) / "config.json").stat().st_mtime_ns
    assert with_special_tokens(str(shifted), (EF_START, EF_END), seed=0) == path  # cached: not made again
    assert (Path(path) / "config.json").stat().st_mtime_ns == made
    assert with_special_tokens(path, (EF_START, EF_END)) == path  # a model that has them is used as it is
    old = model.get_input_embeddings().weight.detach()
    tok, emb = load_tokenizer(path), load_causal_lm(path).get_input_embeddings().weight.detach()
    ids = tok.convert_tokens_to_ids([EF_START, EF_END])
    assert emb.shape[0] >= len(tok) and min(ids) >= old.shape[0]  # new rows
    assert torch.equal(emb[:old.shape[0]], old)  # the existing rows are untouched
    new, mean = emb[ids], old.mean(0)
    spread = (old - mean).norm(dim=1).mean()  # a typical row's distance from the mean
    assert (new - mean).norm(dim=1).max() < 3 * spread < 0.5 * mean.norm()  # near the mean, far from the origin
    assert tok.decode([ids[0]]) == EF_START and tok(EF_START + "hi", add_special_tokens=False)["input_ids"][0] == ids[0]


def test_markers_on_an_embedding_matrix_padded_past_the_tokenizer(tiny_model_dir, tmp_path):
    """Qwen-style: more embedding rows than tokens, so the new ids land on padding rows; they get the mean too."""
    from alignkit.models.loading import load_causal_lm, load_tokenizer
    from alignkit.models.special_tokens import with_special_tokens

    padded = tmp_path / "padded"
    model, tok = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    model.resize_token_embeddings(len(tok) + 8)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(3.0)  # far from the origin (padding rows too)
        model.get_input_embeddings().weight[len(tok):] = -50.0  # untrained padding rows
    model.save_pretrained(padded)
    tok.save_pretrained(padded)
    path = with_special_tokens(str(padded), (EF_START, EF_END), seed=0)
    emb = load_causal_lm(path).get_input_embeddings().weight.detach()
    assert emb.shape[0] == len(tok) + 8  # not resized: the ids fit in the padding
    ids = load_tokenizer(path).convert_tokens_to_ids([EF_START, EF_END])
    assert max(ids) < emb.shape[0]
    mean = emb[:len(tok)].mean(0)
    assert torch.allclose(emb[ids], mean.expand(2, -1))
