"""Refactoring the engine must not change what it computes: the per-step losses of one fixed recipe per record
kind, recorded with the code before the record-kind modules, the loop split and the batch sources
(`record_losses.py` at commit e26a28b), are asserted here.

Tolerance: the same operations in the same order as when recorded, but on another CPU the kernels' last bits
differ and two Adam steps at lr 1e-3 magnify them (the gradient-accumulation test measured whole-update differences
<= 1.4e-4 relative); rel 1e-3 holds for that. A refactor that changes the arithmetic (a wrong mask, reference or
batch order) moves these losses by 5-300% from step to step, far outside it."""
import json
from pathlib import Path

import pytest

from tests.engine.record_losses import CASES, losses

RECORDED = json.loads((Path(__file__).with_name("recorded_losses.json")).read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_losses_as_recorded_before_the_refactor(name, tmp_path):
    assert losses(name, tmp_path) == pytest.approx(RECORDED[name], rel=1e-3)
