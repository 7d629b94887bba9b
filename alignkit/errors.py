"""Errors a user can act on. The CLI prints them as one line (`error: ...`) without a traceback."""


class AlignkitError(Exception):
    """A problem with the user's input (recipe, data, model path) or environment, explained in its message."""


class RecipeError(AlignkitError):
    """A recipe key is unknown, has the wrong type, or combines badly with another key."""


class DataError(AlignkitError):
    """A data source is missing or a row is malformed."""
