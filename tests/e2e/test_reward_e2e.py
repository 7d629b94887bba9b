"""Reward models end to end through the CLI: causal RM on tiny-llama in a Ray Train worker (torch backend; `slow`
since it reached 45 s; multi-worker DeepSpeed is covered by tests/e2e/test_ray_train_e2e.py and the recipe itself
runs 2 workers with ZeRO-2), then the evaluation suite; the export is a Hugging Face sequence-classification model."""
import json

import pytest
import torch

from tests.e2e.test_cli import cli_error, launch


@pytest.mark.slow  # ~45 s; the reward objectives, data, suite and record kind are tested in-process
def test_tiny_causal_rm_run(tmp_path, tokenizer):
    out = tmp_path / "run"
    proc = launch("recipes/reward/tiny_debug.yaml", f"run.output_dir={out}", "trainer.backend=torch",
                  "trainer.zero_stage=0", "cluster.num_workers=1", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train/mmd", "train/bt_loss", "train/accuracy"} <= set(records[-1])
    assert records[-1]["train/loss"] > records[-1]["train/bt_loss"]  # lam * MMD > 0 is part of the loss
    results = json.loads((out / "reward_eval.json").read_text())
    assert set(results) == {"held_out"} and results["held_out"]["pairs"] == 128
    assert 0.0 <= results["held_out"]["accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    assert "## Reward-model evaluation" in report and "| held_out | 128 |" in report
    assert (out / "calibration.png").exists()

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    from alignkit.evaluation.reward import RewardScorer

    prompt = [{"role": "user", "content": "Which is larger, 3 or 5?"}]
    response = [{"role": "assistant", "content": "5 is larger."}]
    ours = RewardScorer(str(out / "final")).score([prompt], [response])[0]
    text = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    with torch.no_grad():
        hf = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
    assert abs(float(hf) - float(ours[0])) < 1e-4


def test_reward_recipe_with_a_missing_suite(tmp_path, capsys, monkeypatch):
    assert "does not exist" in cli_error(capsys, monkeypatch, "recipes/reward/tiny_debug.yaml",
                                         f"eval.suite={tmp_path}/nope.yaml", f"run.output_dir={tmp_path}/run")


def test_suite_on_a_policy_objective_is_refused(capsys, monkeypatch):
    assert "evaluation suites are for reward models" in cli_error(
        capsys, monkeypatch, "recipes/dpo/tiny_debug.yaml", "eval.suite=evals/reward.yaml", "--dry-run")
