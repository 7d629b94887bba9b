"""Where alignkit keeps downloaded and converted artefacts (models, encoded data, op builds) between runs, and the two
helpers every cache entry uses: a file lock (parallel workers build an entry once) and a cheap fingerprint of the
files an entry is made from."""
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """`$ALIGNKIT_CACHE`, else `~/.cache/alignkit`; created on first use."""
    path = Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def shipped(path: str | Path, folder: str) -> Path:
    """`path` itself when it exists, else the file of that name shipped with alignkit in `folder` (recipes or evals:
    package data), with or without `.yaml` and a leading `<folder>/`; else `path` unchanged (callers report it)."""
    given = Path(path)
    if given.exists():
        return given
    root = Path(__file__).resolve().parent / folder
    stem = str(path).removeprefix(f"{folder}/")
    for candidate in (root / stem, root / f"{stem}.yaml"):
        if candidate.is_file():
            return candidate
    return given


@contextmanager
def file_lock(path: Path):
    """An exclusive lock held while the block runs (a cache entry is built by one process; the others wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def files_fingerprint(folder: Path, suffixes: tuple[str, ...] = (".json", ".safetensors", ".bin", ".model",
                                                                  ".jinja", ".txt")) -> str:
    """What identifies a model or tokenizer directory without reading it: its path and its files' names, sizes and
    modification times."""
    parts = [str(folder.resolve())]
    for f in sorted(folder.glob("*")):
        if f.is_file() and f.suffix in suffixes:
            stat = f.stat()
            parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)
