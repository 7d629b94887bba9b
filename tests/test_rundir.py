"""Run directories (alignkit/rundir.py): an earlier run is refused, or replaced only when the new run succeeds."""
import pytest

from alignkit.errors import AlignkitError, DataError, RecipeError
from alignkit.rundir import RunDirectory, refuse_existing_run, run_directory


def _earlier_run(out):
    (out / "final").mkdir(parents=True)
    (out / "final" / "model.safetensors").write_bytes(b"weights")
    (out / "report.md").write_text("# earlier\n")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "ckpt").write_text("kept")
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _files(out):
    return {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_an_earlier_run_is_refused_without_overwrite(tmp_path):
    before = _earlier_run(tmp_path / "run")
    with pytest.raises(RecipeError, match="already holds a finished run .*run.overwrite=true.*run.resume=auto"):
        refuse_existing_run(tmp_path / "run", overwrite=False, resume=False)
    refuse_existing_run(tmp_path / "run", overwrite=True, resume=False)  # asked for: no error
    refuse_existing_run(tmp_path / "run", overwrite=False, resume=True)
    refuse_existing_run(tmp_path / "new", overwrite=False, resume=False)  # nothing there
    assert _files(tmp_path / "run") == before


def test_only_checkpoints_is_not_a_run(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    refuse_existing_run(tmp_path / "run", overwrite=False, resume=False)


@pytest.mark.parametrize("error", [DataError("bad row"), RuntimeError("worker died"), KeyboardInterrupt()])
def test_a_failed_replacement_restores_the_earlier_run(tmp_path, error):
    out = tmp_path / "run"
    before = _earlier_run(out)
    with pytest.raises(type(error)) as raised:
        with run_directory(out, overwrite=True, resume=False) as directory:
            directory.claim()
            assert not (out / "report.md").exists()  # set aside while the new run runs
            (out / "metrics.jsonl").write_text('{"step": 1, "new": true}\n')
            (out / "final").mkdir()
            raise error
    assert _files(out) == before  # byte for byte, no leftovers of the failed run
    if isinstance(error, AlignkitError):
        assert "was restored unchanged" in str(raised.value)


def test_a_successful_replacement_removes_the_earlier_run(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    with run_directory(out, overwrite=True, resume=False) as directory:
        directory.claim()
        (out / "report.md").write_text("# new\n")
    assert (out / "report.md").read_text() == "# new\n"
    assert not (out / "metrics.jsonl").exists() and not (out / ".replaced").exists()
    assert (out / "checkpoints" / "ckpt").read_text() == "kept"  # checkpoints are never moved


def test_a_failure_before_the_claim_touches_nothing(tmp_path):
    out = tmp_path / "run"
    before = _earlier_run(out)
    with pytest.raises(DataError):
        with run_directory(out, overwrite=True, resume=False):
            raise DataError("validation failed")
    assert _files(out) == before


def test_resume_keeps_the_run_but_its_stale_results(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    RunDirectory(out, overwrite=False, resume=True).claim(stale=("report.md",))
    assert not (out / "report.md").exists() and (out / "metrics.jsonl").exists()
