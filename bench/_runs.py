"""What every comparison benchmark here shares: run named recipes one after another as normal `launch.py` runs in
<root>/<slug>, skip failed ones (their stderr is printed), time each (<run>/wall_s), and re-print the table."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def main(doc: str, default_root: str, runs: dict[str, tuple[str, list[str]]], table: Callable[[Path], str],
         common: tuple[str, ...] = ()) -> None:
    """`runs`: {name: (recipe, [overrides])}; `common`: overrides for every run (a run's own and the command line's
    come after them, so they win)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=default_root)
    p.add_argument("--only", nargs="*", help="run only these names")
    p.add_argument("--table-only", action="store_true", help="re-print the table from finished runs")
    p.add_argument("overrides", nargs="*", help="a.b=c recipe overrides for every run")
    args = p.parse_args()
    unknown = [n for n in args.only or [] if n not in runs]
    if unknown:  # argparse reads `--only a b x.y=z` as three names: say so instead of dropping the override
        p.error(f"unknown run name(s) {unknown}; runs: {list(runs)}. Put a.b=c overrides before --only.")
    root = Path(args.root)
    if not args.table_only:
        for name, (recipe, extra) in runs.items():
            if args.only and name not in args.only:
                continue
            out = root / slug(name)
            # a run's own overrides win over the common ones; a benchmark re-run replaces its earlier run
            overrides = ["run.overwrite=true", *common, *extra, *args.overrides]
            print(f"== {name}: {recipe} {' '.join(overrides)}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "launch.py", recipe, f"run.output_dir={out}", *overrides],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            (out / "wall_s").write_text(f"{time.perf_counter() - start:.0f}\n")
            print(table(root), flush=True)
    print(table(root))
