"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""

import reprlib


class AnygenError(Exception):
    """A mistake in user input (file, prompt, config, model directory) with a message that says what to fix."""


# repr() of a user value inside an error message is bounded: a YAML alias bomb or a 50 MB string
# must not be expanded just to print it
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlong = 40
_SHORT.maxlevel = 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
SHORT_REPR_CHARS = 100


def short_repr(value) -> str:
    """repr(value) cut to about 100 characters, without building the full repr first."""
    text = _SHORT.repr(value)
    return text if len(text) <= SHORT_REPR_CHARS else text[:SHORT_REPR_CHARS - 3] + "..."
