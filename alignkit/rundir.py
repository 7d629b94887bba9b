"""A run's output directory, and the promise that a finished run is never destroyed by a later one.

`runs/<name>/` belongs to one run. A new run with the same name is refused (one `error:` line that names
`run.overwrite` and `run.resume`) before anything is read or written. With `run.overwrite: true`, the earlier run's
files are moved aside into `<out>/.replaced/` only once recipe, model and data have been validated; they are deleted
when the new run finishes, and moved back (the new run's partial files removed) if it fails for any reason, so a
failed replacement leaves the earlier run byte-for-byte as it was. `run.resume` continues the run in place.
Checkpoints (`<out>/checkpoints/`, Ray Train's storage) are never moved: `run.resume: auto` needs them."""
from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from alignkit.errors import AlignkitError, RecipeError

log = logging.getLogger(__name__)

HOLD = ".replaced"  # where an earlier run waits while its replacement runs
KEEP = ("checkpoints", HOLD)  # never moved aside nor removed


def run_files(out: Path) -> list[Path]:
    """What a run has written into `out` (its checkpoints excluded)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.name not in KEEP)


def refuse_existing_run(out: str | Path, overwrite: bool, resume: bool) -> None:
    """Raise (without writing anything) when `out` holds an earlier run that this run would replace, unless the
    recipe says `run.overwrite: true` or `run.resume`."""
    out = Path(out)
    found = run_files(out)
    if not found or overwrite or resume:
        return
    state = "a finished run" if (out / "report.md").exists() else "an earlier run (unfinished: no report.md)"
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:5]) + (", ..." if len(found) > 5 else "")
    raise RecipeError(f"{out} already holds {state} ({names}); nothing was changed. Choose another run.name, set "
                      "run.overwrite=true to replace it, or run.resume=auto to continue it")


class RunDirectory:
    """The output directory of the run being made; see the module docstring."""

    @classmethod
    def of(cls, recipe) -> RunDirectory:
        return cls(Path(recipe.output_dir), recipe.run.overwrite, recipe.run.resume is not None)

    def __init__(self, out: Path, overwrite: bool, resume: bool):
        self.out, self.overwrite, self.resume = Path(out).resolve(), overwrite, resume
        self.claimed = False
        self.held: list[str] = []

    def claim(self, stale: tuple[str, ...] = ()) -> Path:
        """Call once recipe, model and data are validated: the directory becomes this run's. A resumed run keeps
        its files but `stale` ones (results the resumed run will write anew)."""
        if self.claimed:
            return self.out
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume:
            for name in stale:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        else:
            found = run_files(self.out)
            if found and not self.overwrite:  # a direct caller that skipped refuse_existing_run
                raise RecipeError(f"{self.out} already holds a run; set run.overwrite=true to replace it")
            hold = self.out / HOLD
            if found:
                shutil.rmtree(hold, ignore_errors=True)
                hold.mkdir()
                for path in found:
                    path.rename(hold / path.name)
                self.held = [p.name for p in found]
                log.info("run.overwrite: the earlier run's files are set aside in %s until this run finishes", hold)
        self.claimed = True
        return self.out

    def commit(self) -> None:
        if self.held:
            shutil.rmtree(self.out / HOLD, ignore_errors=True)
            self.held = []

    def rollback(self) -> bool:
        """Put the earlier run back; returns whether there was one to restore."""
        if not self.held:
            return False
        hold = self.out / HOLD
        for path in run_files(self.out):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in self.held:
            (hold / name).rename(self.out / name)
        shutil.rmtree(hold, ignore_errors=True)
        self.held = []
        return True


@contextlib.contextmanager
def run_directory(out: str | Path, overwrite: bool, resume: bool) -> Iterator[RunDirectory]:
    """Refuse to replace an earlier run unless asked; commit on success; on failure restore the earlier run and
    say so in the error. The caller claims the directory once its inputs are validated."""
    refuse_existing_run(out, overwrite, resume)
    directory = RunDirectory(Path(out), overwrite, resume)
    try:
        yield directory
    except BaseException as exc:
        if directory.rollback():
            note = f"; the earlier run in {directory.out} was restored unchanged"
            if isinstance(exc, AlignkitError):
                raise type(exc)(f"{exc}{note}") from exc
            log.error("run failed%s", note)
        raise
    directory.commit()
