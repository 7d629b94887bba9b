"""Run directories (alignkit/rundir.py): an earlier run is refused, or replaced only when the new run succeeds."""
import pytest

from alignkit.errors import AlignkitError, DataError, RecipeError
from alignkit.rundir import HOLD, RunDirectory, run_directory


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
    with pytest.raises(RecipeError, match="already holds a finished run .*set run.overwrite=true"):
        RunDirectory(tmp_path / "run", overwrite=False, resume=False).refuse_if_taken()
    RunDirectory(tmp_path / "run", overwrite=True, resume=False).refuse_if_taken()  # asked for: no error
    RunDirectory(tmp_path / "run", overwrite=False, resume=True).refuse_if_taken()  # a checkpoint to continue
    RunDirectory(tmp_path / "new", overwrite=False, resume=False).refuse_if_taken()  # nothing there
    assert _files(tmp_path / "run") == before


def test_resume_without_a_checkpoint_is_refused_not_a_fresh_run_over_the_old_one(tmp_path):
    """run.resume=auto on a run that wrote no checkpoints would start fresh in place: refused instead."""
    from alignkit.config import recipe_from_dict

    before = _earlier_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "ckpt").unlink()
    recipe = recipe_from_dict({"run": {"name": "x", "output_dir": str(tmp_path / "run"), "resume": "auto"},
                               "data": {"train": "builtin:concise_arithmetic"}, "objective": {"name": "sft"}})
    with pytest.raises(RecipeError, match="no checkpoint of this run to continue"):
        RunDirectory.of(recipe).refuse_if_taken()
    (tmp_path / "run" / "checkpoints" / "x-20260101-000000" / "step_000002").mkdir(parents=True)
    RunDirectory.of(recipe).refuse_if_taken()  # now there is one: resume in place
    assert _files(tmp_path / "run") == {k: v for k, v in before.items() if k.parts[0] != "checkpoints"}


def test_an_interrupted_replacement_is_never_deleted(tmp_path):
    """A replacement killed hard leaves the earlier run in .replaced/: the next overwrite must not delete it."""
    out = tmp_path / "run"
    _earlier_run(out)
    RunDirectory(out, overwrite=True, resume=False).claim()  # ... and the process dies here
    held = _files(out / HOLD)
    with pytest.raises(AlignkitError, match="replacement was interrupted"):
        RunDirectory(out, overwrite=True, resume=False).claim()
    assert _files(out / HOLD) == held


def test_only_checkpoints_is_not_a_run(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    RunDirectory(tmp_path / "run", overwrite=False, resume=False).refuse_if_taken()


@pytest.mark.parametrize("error", [DataError("bad row"), RuntimeError("worker died"), KeyboardInterrupt()])
def test_a_failed_replacement_restores_the_earlier_run(tmp_path, error):
    out = tmp_path / "run"
    before = _earlier_run(out)
    with pytest.raises(type(error)) as raised:
        with run_directory(RunDirectory(out, overwrite=True, resume=False)) as directory:
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
    with run_directory(RunDirectory(out, overwrite=True, resume=False)) as directory:
        directory.claim()
        (out / "report.md").write_text("# new\n")
    assert (out / "report.md").read_text() == "# new\n"
    assert not (out / "metrics.jsonl").exists() and not (out / ".replaced").exists()
    assert (out / "checkpoints" / "ckpt").read_text() == "kept"  # checkpoints are never moved


def test_a_failure_before_the_claim_touches_nothing(tmp_path):
    out = tmp_path / "run"
    before = _earlier_run(out)
    with pytest.raises(DataError):
        with run_directory(RunDirectory(out, overwrite=True, resume=False)):
            raise DataError("validation failed")
    assert _files(out) == before


def test_resume_keeps_the_run_but_its_stale_results(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    RunDirectory(out, overwrite=False, resume=True).claim(stale=("report.md",))
    assert not (out / "report.md").exists() and (out / "metrics.jsonl").exists()
