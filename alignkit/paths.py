"""Where alignkit keeps downloaded and converted artefacts (models, op builds) between runs."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """`$ALIGNKIT_CACHE`, else `~/.cache/alignkit`; created on first use."""
    path = Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
