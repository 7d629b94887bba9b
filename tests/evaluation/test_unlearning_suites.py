"""Evaluation suites (evals/unlearning*.yaml) and the loaders of real benchmarks' formats, on small local files with
the hub schemas (TOFU *_perturbed configs, MUSE knowmem/verbmem/raw, WMDP/MMLU multiple choice), since the hub is not
reachable here; the shipped suites parse and name the hub configs they need."""
import json

import pytest
import torch

from alignkit.errors import DataError, RecipeError
from alignkit.evaluation import unlearning as ue
from tests.conftest import REPO


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _tofu(tmp_path, name, n, perturbed=True):
    rows = []
    for i in range(n):
        row = {"question": f"What genre does author {name}{i} write?", "answer": f"Author {name}{i} writes poems."}
        if perturbed:  # TOFU's forget10_perturbed / retain_perturbed fields
            row.update(paraphrased_answer=f"Poems are what {name}{i} writes.", paraphrased_question="Which genre?",
                       perturbed_answer=[f"Novels are what {name}{i} writes.", f"Plays are what {name}{i} writes."])
        rows.append(row)
    return _jsonl(tmp_path / f"{name}.jsonl", rows)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tokenizer):
    from alignkit.models.loading import load_causal_lm

    torch.manual_seed(0)
    return load_causal_lm(tiny_model_dir).eval(), tokenizer


def _suite(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return ue.load_suite(str(path))


def test_tofu_format_suite(tmp_path, tiny):
    forget, retain, holdout = _tofu(tmp_path, "f", 4), _tofu(tmp_path, "r", 4), _tofu(tmp_path, "h", 4, False)
    suite = _suite(tmp_path, f"sets:\n  forget: {{data: {forget}}}\n  retain: {{data: {retain}}}\n"
                             f"  holdout: {{data: {holdout}}}\nmax_items: 3\n")
    sets = ue.read_suite_sets(suite)
    assert [len(sets[k]) for k in ("forget", "retain", "holdout")] == [3, 3, 3]
    metrics, details = ue.evaluate_model(*tiny, sets, max_new_tokens=3, batch_size=4)
    assert {"forget/truth_ratio", "retain/truth_ratio", "utility", "mia/mink"} <= set(metrics)
    assert "forget/fact" not in metrics  # TOFU items carry no `fact`
    assert ue.compare_to_retain(details, details)["forget_quality"] == pytest.approx(1.0)


def test_muse_format_suite(tmp_path, tiny):
    """MUSE: QA without perturbed answers (no truth ratio), VerbMem from {prompt, gt}, MIA on raw texts."""
    qa = _tofu(tmp_path, "qa", 3, perturbed=False)
    verb = _jsonl(tmp_path / "verbmem.jsonl", [{"prompt": "The council met on", "gt": " Tuesday to vote."}] * 2)
    raw = _jsonl(tmp_path / "raw.jsonl", [{"text": f"News story number {i} about the harbour."} for i in range(3)])
    held = _jsonl(tmp_path / "held.jsonl", [{"text": f"Another report {i} on the weather."} for i in range(3)])
    suite = _suite(tmp_path, f"sets:\n  forget: {{data: {qa}}}\n  retain: {{data: {qa}}}\n  forget_text: "
                             f"{{data: {verb}}}\n  members: {{data: {raw}}}\n  holdout: {{data: {held}}}\n")
    sets = ue.read_suite_sets(suite)
    metrics, details = ue.evaluate_model(*tiny, sets, max_new_tokens=3, batch_size=4)
    assert "forget/truth_ratio" not in metrics and "forget/truth_ratios" not in details
    assert 0 <= metrics["verbmem"] <= 1 and 0 <= metrics["mia/zlib"] <= 1 and 0 <= metrics["utility"] <= 1
    compared = ue.compare_to_retain(details, details)
    assert "forget_quality" not in compared and compared["privleak"] == pytest.approx(0.0)


def test_multiple_choice_suite_and_bad_rows(tmp_path, tiny):
    rows = [{"question": "2 + 2 =", "choices": ["3", "4", "5", "6"], "answer": 1},
            {"question": "The sky is", "choices": ["blue", "green"], "answer": 0}]
    mc = _jsonl(tmp_path / "wmdp.jsonl", rows)
    suite = _suite(tmp_path, f"sets:\n  wmdp_bio: {{data: {mc}, kind: multiple_choice}}\n")
    sets = ue.read_suite_sets(suite)
    metrics, _ = ue.evaluate_model(*tiny, sets)
    probe = ue.ModelProbe(*tiny)
    assert metrics["mc/wmdp_bio"] == ue.multiple_choice_accuracy(probe, rows)
    assert set(metrics) == {"mc/wmdp_bio"}
    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(DataError, match="row 0: `answer` must be the index"):
        ue.read_suite_sets(_suite(tmp_path, f"sets:\n  x: {{data: {bad}, kind: multiple_choice}}\n"))
    with pytest.raises(RecipeError, match="not one of"):
        _suite(tmp_path, f"sets:\n  wmdp: {{data: {mc}}}\n")
    with pytest.raises(RecipeError, match="unknown key"):
        _suite(tmp_path, "sets: {}\nmax_item: 3\n")
    verb = _jsonl(tmp_path / "v.jsonl", [{"prompt": "no ground truth"}])
    with pytest.raises(DataError, match="forget_text row needs"):
        ue.read_suite_sets(_suite(tmp_path, f"sets:\n  forget_text: {{data: {verb}}}\n"))


def test_shipped_suites_parse(monkeypatch):
    calls = []
    for name in ("unlearning", "unlearning_tofu", "unlearning_muse_news", "unlearning_wmdp_bio"):
        suite = ue.load_suite(str(REPO / "evals" / f"{name}.yaml"))
        calls += [spec["data"] for spec in suite.sets.values()]
    assert "locuslab/TOFU:forget10_perturbed" in calls and "cais/wmdp:wmdp-bio" in calls
    assert "muse-bench/MUSE-News:verbmem" in calls


def test_hub_config_is_read_from_the_source_name(monkeypatch):
    import datasets

    seen = {}

    class Fake:
        def to_list(self):
            return [{"question": "q", "answer": "a"}]

    def fake_load(name, config, split):
        seen.update(name=name, config=config, split=split)
        return Fake()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    from alignkit.kinds import load_records

    load_records("locuslab/TOFU:forget10", "train", "forget")
    assert seen == {"name": "locuslab/TOFU", "config": "forget10", "split": "train"}


def test_builtin_suite_reports_fact_recall(tiny):
    sets = ue.read_suite_sets(ue.load_suite(str(REPO / "evals" / "unlearning.yaml")))
    assert [len(sets[k]) for k in ("forget", "retain", "holdout", "forget_text")] == [60, 60, 60, 10]
    small = {k: v[:4] for k, v in sets.items() if k != "multiple_choice"}
    metrics, _ = ue.evaluate_model(*tiny, small, max_new_tokens=3, batch_size=4)
    assert 0 <= metrics["forget/fact"] <= 1 and 0 <= metrics["retain/fact"] <= 1


def test_models_without_a_chat_template_read_plain_question_answer(tiny):
    """MUSE's target models are base LMs: QA is scored as "Question: q\\nAnswer: a" text."""
    import copy

    model, tok = tiny
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    probe = ue.ModelProbe(model, plain)
    assert probe.qa_row("Who?", "Me.") == {"prompt": "Question: Who?\nAnswer:", "completion": " Me."}
    sets = {"forget": [{"question": "Who wrote it?", "answer": "Ann did."}] * 2,
            "retain": [{"question": "Who read it?", "answer": "Bo did."}] * 2}
    metrics, _ = ue.evaluate_model(model, plain, sets, max_new_tokens=3)
    assert 0 < metrics["forget/prob"] < 1 and 0 <= metrics["utility"] <= 1


def test_cli_on_any_checkpoint(tmp_path, tiny_model_dir, capsys):
    forget, retain = _tofu(tmp_path, "f", 3), _tofu(tmp_path, "r", 3)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"sets:\n  forget: {{data: {forget}}}\n  retain: {{data: {retain}}}\nmax_new_tokens: 3\n")
    from alignkit.cli import main

    model = tmp_path / "tiny"
    model.symlink_to(tiny_model_dir)
    assert main(["eval", str(suite), f"model.path={model}", "--out", str(tmp_path / "out"),
                 f"retain.path={tiny_model_dir}"]) == 0  # (flags and settings in any order)
    table = capsys.readouterr().out
    assert "| metric | retain | tiny |" in table and "| forget_quality | 1 | 1 |" in table
    result = json.loads((tmp_path / "out" / "unlearning_eval.json").read_text())
    assert set(result["metrics"]) == {"retain", "tiny"}
