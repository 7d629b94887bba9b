"""The SmolLM2 tables of the README as `slow` tests (`make test-slow`; about an hour each on 2 cores): the FCP table
(bench/fcp.py) and the per-step-negatives table (bench/step_negatives.py), run into a temporary root and results
folder, and checked for what the README reports: every method has a held-out accuracy, and the controllability
check (offline FCP under c+ vs c-) and the mining statistics are there."""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_the_fcp_table(tmp_path):
    proc = subprocess.run([sys.executable, "bench/fcp.py", "--root", str(tmp_path / "runs"), "--results",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "fcp.json").read_text())
    methods = {r["method"] for r in report["results"]}
    assert {"base (warm-start SFT)", "offline FCP under c+", "FCP + bootstrap, partially online (3 rounds)"} <= methods
    assert all(0 <= r["accuracy"] <= 1 and r["tokens"] > 0 for r in report["results"])
    assert all(len(rounds) == 3 for rounds in report["rounds"].values())


def test_the_step_negatives_table(tmp_path):
    proc = subprocess.run([sys.executable, "bench/step_negatives.py", "--root", str(tmp_path / "runs"), "--results",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=3 * 3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "step_negatives.json").read_text())
    assert {(r["method"], r["size"]) for r in report["results"]} >= {(m, n) for m in ("sft", "rft", "full_dpo",
                                                                                     "step_dpo", "step_awr")
                                                                     for n in (16, 32, 64)}
    step = next(r["summary"] for r in report["results"] if r["method"] == "step_dpo" and r["size"] == 64)
    assert step["values"]["generate_calls"] == 1 and step["mc_finds_true_first_error"] is not None
    assert (tmp_path / "step_negatives.png").exists()
