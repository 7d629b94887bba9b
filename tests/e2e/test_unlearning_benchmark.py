"""The built-in unlearning benchmark on SmolLM2-135M (slow: ~35 min with the learn stage, ~13 min with it cached):
the target model has learned the forget facts, NPO removes them, the retain model never knew them, and every row of
the report is there. Thresholds are loose versions of what `bench/unlearning_builtin.py` measured (README)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_npo_on_the_builtin_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "bench/unlearning_builtin.py", "--root", str(tmp_path), "--only", "npo",
                           "unlearn.quantize_bits=[4]"], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "npo" / "unlearning_eval.json").read_text())["metrics"]
    assert set(rows) == {"target", "retain", "unlearned", "unlearned int4", "unlearned + relearn"}
    target, retain, unlearned = rows["target"], rows["retain"], rows["unlearned"]
    assert target["forget/fact"] >= 0.9 and target["retain/fact"] >= 0.9  # learned (measured 0.98 / 0.95)
    assert retain["forget/fact"] <= 0.3  # never saw them: chance-level guesses (measured 0.13)
    assert unlearned["forget/fact"] <= 0.5 * target["forget/fact"]  # forgotten (measured 0.017)
    assert unlearned["forget/rouge"] <= 0.5 * target["forget/rouge"]  # measured 0.136 vs 0.997
    assert "| npo |" in proc.stdout
