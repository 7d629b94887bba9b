"""The unlearning suite on a real (tiny) model: every metric computed, in range, and consistent with the pure
metric functions; the quantisation attack rounds weights onto the grid."""
import numpy as np
import pytest
import torch

from alignkit.data.fictitious_authors import fictitious_authors
from alignkit.evaluation.unlearning import ModelProbe, compare_to_retain, evaluate_model, quantize_weights_


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tokenizer):
    from alignkit.models.loading import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(tiny_model_dir).eval(), tokenizer


def _sets():
    return {"forget": fictitious_authors("forget01"), "retain": fictitious_authors("retain99")[:6],
            "holdout": fictitious_authors("holdout")[:6], "forget_text": fictitious_authors("forget01_text")}


def test_evaluate_model_reports_every_metric(tiny):
    model, tok = tiny
    metrics, details = evaluate_model(model, tok, _sets(), max_new_tokens=4, batch_size=8)
    for key in ("forget/prob", "forget/rouge", "forget/truth_ratio", "forget/knowmem", "retain/prob", "retain/rouge",
                "retain/truth_ratio", "utility", "verbmem", "mia/loss", "mia/zlib", "mia/mink", "mia/minkpp"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert len(details["forget/truth_ratios"]) == 6
    same = compare_to_retain(details, details)  # a model compared with itself: identical distributions
    assert same["forget_quality"] == pytest.approx(1.0) and same["privleak"] == pytest.approx(0.0)


def test_avg_nll_matches_a_direct_computation(tiny):
    model, tok = tiny
    probe = ModelProbe(model, tok)
    q, a = "Where was Orrin Pendry born?", "Orrin Pendry was born in Oslo."
    value = probe.avg_nll([q], [a])[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                   tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    lp = logp.gather(-1, targets[:, None]).squeeze(-1)[len(p_ids) - 1:]
    assert value == pytest.approx(float(-lp.mean()), abs=1e-4)


def test_quantize_weights_rounds_onto_the_grid(tiny):
    model, _ = tiny
    import copy

    q = copy.deepcopy(model)
    quantize_weights_(q, 4)
    w = q.model.layers[0].mlp.down_proj.weight
    scale = w.abs().amax(dim=1, keepdim=True) / 7
    assert torch.allclose(w / scale, (w / scale).round(), atol=1e-4)
    assert not torch.equal(w, model.model.layers[0].mlp.down_proj.weight)
    assert np.unique((w / scale).round().detach().numpy()).size <= 15


def test_multiple_choice_accuracy_follows_the_likelihoods(tiny):
    from alignkit.evaluation.unlearning import multiple_choice_accuracy

    model, tok = tiny
    probe = ModelProbe(model, tok)
    items = [{"question": "Which color is the sky?", "choices": ["blue", "green", "red", "a very long answer here"],
              "answer": 0}, {"question": "2 + 2 =", "choices": ["4", "5"], "answer": 1}]
    def score(prompt, choice):  # direct: log-probs of the choice tokens only, no EOS
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + tok(choice, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].float().log_softmax(-1)
        return float(logp.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(p_ids) - 1:].sum())

    scores = [[score("Which color is the sky?\nAnswer:", f" {c}") for c in items[0]["choices"]],
              [score("2 + 2 =\nAnswer:", f" {c}") for c in items[1]["choices"]]]
    expected = np.mean([int(np.argmax(s) == item["answer"]) for s, item in zip(scores, items)])
    assert multiple_choice_accuracy(probe, items) == pytest.approx(expected)
    # relabelling the right answer to the model's favourite makes it 100%
    fav = [{**item, "answer": int(np.argmax(s))} for s, item in zip(scores, items)]
    assert multiple_choice_accuracy(probe, fav) == 1.0


def test_shared_prompt_scoring_gives_the_same_metrics(tiny):
    """The suite with each question's KV cache shared by its answer, paraphrase and perturbed answers (default) ==
    every sequence scored in full."""
    model, tok = tiny
    shared, shared_details = evaluate_model(model, tok, _sets(), max_new_tokens=4, batch_size=4)
    full, full_details = evaluate_model(model, tok, _sets(), max_new_tokens=4, batch_size=4, share_prompts=False)
    assert shared.keys() == full.keys()
    # Other attention shapes (cached prompt + answer vs one forward): token log-probs of ~-10.8 differ by ~1 ulp
    # (1e-6), and the metrics are means or exp() of means of them: relative error ~1e-6 (measured <= 1.8e-6 for the
    # metrics, 2e-7 for truth ratios under ATEN_CPU_CAPABILITY default/avx2/avx512). Probabilities are ~2e-5, so an
    # absolute 1e-6 would allow 5%: compare relatively (2e-5), with a floor far below any metric's size.
    for key in full:
        assert shared[key] == pytest.approx(full[key], rel=2e-5, abs=1e-9), key
    np.testing.assert_allclose(shared_details["forget/truth_ratios"], full_details["forget/truth_ratios"], rtol=2e-5,
                               atol=0)
