"""The quickstart as a user runs it (slow: about 6 minutes on 2 cores with the model cached).
It must finish within the 10-minute promise and show a behavioural change on held-out prompts."""
import json
import time

import pytest

from tests.e2e.test_cli import launch


@pytest.mark.slow
def test_quickstart_changes_held_out_behaviour(tmp_path):
    start = time.perf_counter()
    proc = launch("recipes/quickstart.yaml", f"run.output_dir={tmp_path}/quickstart", timeout=900)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 600, f"quickstart took {elapsed:.0f} s"
    behaviour = json.loads((tmp_path / "quickstart" / "behaviour.json").read_text())
    before, after = behaviour["start"]["metrics"], behaviour["final"]["metrics"]
    assert after["gen/format"] >= before["gen/format"] + 0.25, (before, after)
    assert after["gen/correct"] > before["gen/correct"], (before, after)
    records = [json.loads(x) for x in (tmp_path / "quickstart" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/rewards/accuracies" in r]
    assert evals[-1]["eval/rewards/accuracies"] >= 0.8
