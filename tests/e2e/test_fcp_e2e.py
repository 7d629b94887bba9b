"""FCP as a user runs it: `python launch.py recipes/fcp/tiny_debug.yaml` — two bootstrapping rounds on one
persistent trainer with an HF engine: samples under c+, fresh critic feedback, relabelled rows with the same token
ids, `<EF>`/`</EF>` in the exported model that the engine loads; and the recipe errors that stop it early."""
import json

import pytest

from alignkit.kinds.feedback import EF_END, EF_START
from tests.e2e.test_cli import cli_error, launch


@pytest.mark.slow  # ~60 s; online rounds through the launcher stay in the default suite (test_online_e2e), FCP's
# kind, builders and providers are tested in-process (tests/rollout/test_fcp.py)
def test_two_fcp_bootstrap_rounds_through_the_launcher(tmp_path):
    out = tmp_path / "run"
    pool = tmp_path / "offline_rows.jsonl"  # the c+ pool from feedback rows, read on the driver only
    pool.write_text(json.dumps({"feedback": "Accurate and rigorous.", "score": 1.0}) + "\n"
                    + json.dumps({"feedback": "Short and right.", "score": 1.0}) + "\n")
    proc = launch("recipes/fcp/tiny_debug.yaml", f"run.output_dir={out}", f"online.rows_params.conditions={pool}",
                  timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["online/round"] for r in records if "online/round" in r] == [0, 1]
    assert "online/eval_correct" in records[0] and "online/eval_score" in records[-1]
    assert all(r["train/nll"] > 0 for r in records[1:])
    for generation in (0, 1):  # every sample (4 prompts x 2) relabelled with its fresh feedback
        rows = [json.loads(x) for x in (out / "rows" / f"generation_{generation:04d}.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all(r["response_ids"] and r["feedback"] for r in rows)
        assert all(isinstance(r["prompt"], list) and EF_START not in r["prompt"][-1]["content"] for r in rows)
    # the exported model has the markers and the HF engine generates from a conditioned prompt with it
    from alignkit.kinds.feedback import fcp_prompt
    from alignkit.models.loading import load_tokenizer
    from alignkit.rollout.hf import HFEngine
    from alignkit.rollout.types import SamplingParams

    final = out / "final"
    vocab = load_tokenizer(str(final)).get_vocab()
    assert EF_START in vocab and EF_END in vocab
    engine = HFEngine(str(final))
    assert engine.model.get_input_embeddings().weight.shape[0] > vocab[EF_END]
    [c] = engine.generate([fcp_prompt("What is 2+2?", "Accurate.")], SamplingParams(temperature=0, max_tokens=4))
    assert len(c.token_ids) >= 1
    recorded = (out / "recipe.yaml").read_text()
    assert "fcp" in recorded and "Accurate and rigorous." in recorded and "Short and right" not in recorded


@pytest.mark.parametrize("overrides,message", [
    (["~online.rows_params.conditions"], "fcp_relabel needs the pool of positive conditions"),
    (["online.rows_params={conditions: /nonexistent/run}"], "neither a JSONL file of feedback rows"),
    (["online.rows=rejection_sampling"], "rejection_sampling makes `sft` records, but the objective consumes "
                                         "`feedback` records; use fcp_offline"),
    (["online.feedback_params={critique_type: judge}"], "critique_type must be pro or user"),
])
def test_bad_fcp_recipes_fail_before_anything_starts(overrides, message, capsys, monkeypatch):
    err = cli_error(capsys, monkeypatch, "recipes/fcp/tiny_debug.yaml", *overrides, "--dry-run")
    assert message in err.strip().splitlines()[-1]
