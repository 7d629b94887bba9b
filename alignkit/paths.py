"""Where alignkit keeps downloaded and converted artefacts (models, op builds) between runs."""
import os
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
