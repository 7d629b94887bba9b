"""A run's output directory, and the promise that a finished run is never destroyed by a later one.

`runs/<name>/` belongs to one run. A new run with the same name is refused (one `error:` line that names
`run.overwrite`, and `run.resume` when there is a checkpoint to continue) before anything is read or written. With
`run.overwrite: true`, the earlier run's files are moved aside into `<out>/.replaced/` only once recipe, model and
data have been validated; they are deleted when the new run finishes, and moved back (the new run's partial files
removed) if it fails for any reason, so a failed replacement leaves the earlier run byte-for-byte as it was.
`run.resume` continues the run in place when it has a checkpoint. Checkpoints (`<out>/checkpoints/`, or wherever
`run.storage_path` points inside `<out>`) are never moved: `run.resume: auto` needs them."""
from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from alignkit.errors import AlignkitError, RecipeError

log = logging.getLogger(__name__)

HOLD = ".replaced"  # where an earlier run waits while its replacement runs


def has_checkpoints(recipe) -> bool:
    """Whether `run.resume` has something to continue: a given checkpoint directory, or (auto) a checkpoint of this
    run name in run.storage_path (remote storage is not listed here: trusted)."""
    resume = recipe.run.resume
    if resume is None:
        return False
    if resume != "auto" or "://" in recipe.storage_path:
        return True
    return any(Path(recipe.storage_path).glob(f"{recipe.run.name}-*/step_*"))


class RunDirectory:
    """The output directory of the run being made; see the module docstring."""

    @classmethod
    def of(cls, recipe) -> RunDirectory:
        out = Path(recipe.output_dir).resolve()
        keep = ["checkpoints"]
        if "://" not in recipe.storage_path:  # a storage path inside the run directory holds checkpoints too
            storage = Path(recipe.storage_path).resolve()
            if out in storage.parents:
                keep.append(storage.relative_to(out).parts[0])
        return cls(out, recipe.run.overwrite, has_checkpoints(recipe), asked_resume=recipe.run.resume is not None,
                   keep=tuple(keep))

    def __init__(self, out: Path, overwrite: bool, resume: bool, asked_resume: bool = False,
                 keep: tuple[str, ...] = ("checkpoints",)):
        self.out, self.overwrite, self.resume = Path(out).resolve(), overwrite, resume
        self.asked_resume, self.keep = asked_resume or resume, (*keep, HOLD)
        self.claimed = False
        self.held: list[str] = []

    def run_files(self) -> list[Path]:
        """What a run has written into the directory (its checkpoints excluded)."""
        if not self.out.is_dir():
            return []
        return sorted(p for p in self.out.iterdir() if p.name not in self.keep)

    def refuse_if_taken(self) -> None:
        """Raise (without writing anything) when the directory holds an earlier run that this run would replace,
        unless the recipe says `run.overwrite: true` or resumes from a checkpoint of it."""
        found = self.run_files()
        if not found or self.overwrite or self.resume:
            return
        state = "a finished run" if (self.out / "report.md").exists() else "an earlier run (unfinished: no report.md)"
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:5]) + (", ..." if len(found) > 5 else "")
        if self.asked_resume:
            raise RecipeError(f"run.resume: there is no checkpoint of this run to continue (set "
                              f"trainer.checkpoint_every to write them), and {self.out} holds {state} ({names}); "
                              "nothing was changed. Set run.overwrite=true to replace it, or choose another run.name")
        raise RecipeError(f"{self.out} already holds {state} ({names}); nothing was changed. Choose another run.name "
                          "or set run.overwrite=true to replace it" + (
                              " (run.resume=auto continues it from its checkpoints)"
                              if any(self.out.glob("checkpoints/*/step_*")) else ""))

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
            found = self.run_files()
            if found and not self.overwrite:  # a direct caller that skipped refuse_if_taken
                raise RecipeError(f"{self.out} already holds a run; set run.overwrite=true to replace it")
            hold = self.out / HOLD
            if hold.exists():  # a replacement that was killed before it could restore or delete them
                raise AlignkitError(f"{hold} holds the files of an earlier run whose replacement was interrupted; "
                                    f"move them back into {self.out} (or delete them), then run again")
            if found:
                hold.mkdir()
                for path in found:
                    path.rename(hold / path.name)
                    self.held.append(path.name)
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
        for path in self.run_files():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        for name in self.held:
            (hold / name).rename(self.out / name)
        shutil.rmtree(hold, ignore_errors=True)
        self.held = []
        return True


@contextlib.contextmanager
def run_directory(directory: RunDirectory) -> Iterator[RunDirectory]:
    """Refuse to replace an earlier run unless asked; commit on success; on failure restore the earlier run and
    say so in the error. The caller claims the directory once its inputs are validated."""
    directory.refuse_if_taken()
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
