"""Suites of kind `lm_eval` (lm-evaluation-harness) on a small local task in the harness's format, checked against
the same log-likelihood argmax computed here; and alignkit's own multiple-choice cap sampling across subjects."""
import json

import pytest
import torch

from alignkit.errors import RecipeError
from alignkit.evaluation.unlearning import capped_indices

QUESTIONS = [("Which is larger, 3 or 5?", ["3", "5"], 1), ("What colour is the sky?", ["blue", "green", "red"], 0),
             ("How many legs has a cat?", ["four", "two"], 0), ("2 + 2 =", ["3", "4", "5"], 1),
             ("The capital of France is", ["Paris", "Rome"], 0), ("Water freezes at", ["0 C", "50 C"], 0),
             ("Opposite of hot:", ["warm", "cold"], 1), ("First letter:", ["b", "a", "c"], 1)]


def write_task(folder):
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / "tiny_mc.yaml").write_text(f"""task: alignkit_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")


def own_accuracy(model_dir) -> float:
    """Argmax over choices of the summed log-probs of " <choice>" after the prompt: the harness's loglikelihood
    request (context and continuation encoded together, no special tokens), computed here independently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    right = 0
    for question, choices, answer in QUESTIONS:
        context = f"Question: {question}\nAnswer:"
        scores = []
        for choice in choices:
            whole = tok(context + " " + choice, add_special_tokens=False)["input_ids"]
            n_context = len(tok(context, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logps = model(torch.tensor([whole[:-1]])).logits.log_softmax(-1)[0]
            scores.append(sum(logps[i - 1, whole[i]].item() for i in range(n_context, len(whole))))
        right += int(max(range(len(choices)), key=lambda k: (scores[k], -k)) == answer)
    return right / len(QUESTIONS)


def test_lm_eval_suite_on_a_local_task(tmp_path, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    from alignkit.cli import main
    from alignkit.models.loading import resolve_model_path

    (tmp_path / "tasks").mkdir()
    write_task(tmp_path / "tasks")
    suite = tmp_path / "suite.yaml"
    suite.write_text("kind: lm_eval\ntasks: [alignkit_tiny_mc]\ninclude_path: tasks\nbatch_size: 4\n")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    assert main(["eval", str(suite), "model.path=builtin:tiny-llama", "--out", str(tmp_path / "out")]) == 0
    assert "| alignkit_tiny_mc |" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "lm_eval.json").read_text())["results"]["alignkit_tiny_mc"]
    assert results["samples"] == len(QUESTIONS)
    assert results["acc"] == pytest.approx(own_accuracy(resolve_model_path("builtin:tiny-llama")), abs=1e-12)
    assert results["acc_stderr"] > 0


def test_lm_eval_suite_errors_come_before_any_model_loads(tmp_path):
    pytest.importorskip("lm_eval")
    from alignkit.evaluation.lm_eval_suite import load_suite

    (tmp_path / "tasks").mkdir()
    write_task(tmp_path / "tasks")
    suite = tmp_path / "suite.yaml"
    suite.write_text("kind: lm_eval\ntasks: [alignkit_tiny_mcq]\ninclude_path: tasks\n")
    with pytest.raises(RecipeError, match="no task `alignkit_tiny_mcq`; did you mean alignkit_tiny_mc"):
        load_suite(str(suite))
    suite.write_text("kind: lm_eval\ntasks: [alignkit_tiny_mc]\nlimt: 3\n")
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['limt'\]"):
        load_suite(str(suite))


def test_missing_harness_names_the_extra(monkeypatch):
    import builtins

    from alignkit.errors import AlignkitError
    from alignkit.evaluation.lm_eval_suite import require_lm_eval

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "lm_eval" else real(name, *a, **k))
    with pytest.raises(AlignkitError, match=r"alignkit\[eval\]"):
        require_lm_eval()


def test_capped_multiple_choice_sets_sample_every_subject():
    rows = [{"subject": s, "question": f"{s} {i}"} for s in ("anatomy", "law", "virology") for i in range(50)]
    picked = capped_indices(rows, 30, seed=1)
    subjects = [rows[i]["subject"] for i in picked]
    assert len(picked) == 30 and picked == sorted(set(picked))
    assert {s: subjects.count(s) for s in set(subjects)} == {"anatomy": 10, "law": 10, "virology": 10}
    assert capped_indices(rows, 30, seed=1) == picked and capped_indices(rows, 30, seed=2) != picked
    uneven = rows[:2] + rows[50:]  # anatomy has 2 rows: its share goes to the others
    counts = [uneven[i]["subject"] for i in capped_indices(uneven, 30)]
    assert counts.count("anatomy") == 2 and counts.count("law") == counts.count("virology") == 14
    no_subject = [{"question": str(i)} for i in range(100)]
    sample = capped_indices(no_subject, 10, seed=0)
    assert len(sample) == 10 and max(sample) > 10  # not just the first rows
    assert capped_indices(rows[:5], 30) == list(range(5))
