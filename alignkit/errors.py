"""Errors a user can act on. The CLI prints them as one line (`error: ...`) without a traceback."""


class AlignkitError(Exception):
    """A problem with the user's input (recipe, data, model path) or environment, explained in its message."""


class RecipeError(AlignkitError):
    """A recipe key is unknown, has the wrong type, or combines badly with another key."""


class DataError(AlignkitError):
    """A data source is missing or a row is malformed."""


def run_command(main, argv=None, debug: bool = False) -> int:
    """Run a command-line entry point `main(argv) -> exit code` with the CLI's promise: an AlignkitError is one
    `error: ...` line on stderr and exit code 2, no traceback (`debug` or ALIGNKIT_DEBUG=1 shows it)."""
    import os
    import sys

    try:
        return main(argv)
    except AlignkitError as exc:
        if debug or os.environ.get("ALIGNKIT_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
