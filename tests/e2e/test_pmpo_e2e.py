"""PMPO end to end through the CLI and a Ray Train worker on tiny-llama: unpaired records from the built-in pairs, live
reference with exact KL, one-sided mode. (The torch backend keeps the default suite fast; multi-worker DeepSpeed is
covered by test_ray_train_e2e.py and test_fault_tolerance.py.)"""
import json

import pytest

from tests.e2e.test_cli import launch


@pytest.mark.slow  # ~45 s; PMPO's loop path (live reference, exact KL) stays in tests/engine/test_loop.py
def test_tiny_pmpo_rejected_only_run(tmp_path):
    out = tmp_path / "run"
    proc = launch("recipes/pmpo/rejected_only_builtin.yaml", "model.path=builtin:tiny-llama",
                  "data.train_size=32", "data.eval_size=8", "trainer.max_steps=3", "trainer.micro_batch_size=2",
                  "optim.lr=1e-3", "eval.num_prompts=4", "eval.max_new_tokens=4", f"run.output_dir={out}",
                  "trainer.backend=torch", "trainer.zero_stage=0", "cluster.num_workers=1",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["eval/kl"] < 1e-4 and records[-1]["eval/kl"] > records[0]["eval/kl"]
    # rejected-only: no accepted record was trained on (the metric exists only for records present)
    assert all("train/logps/accepted" not in r for r in records[1:])
    assert "train/logps/rejected" in records[1]
    assert "eval/logps/rejected" in records[-1]
