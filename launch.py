#!/usr/bin/env python
"""Run an alignkit recipe: `python launch.py recipes/quickstart.yaml [a.b=c ...] [--dry-run] [--debug]`."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from alignkit.cli import main

    sys.exit(main())
