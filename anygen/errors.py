"""User-facing errors: the CLI prints these as one line (no traceback) and exits non-zero."""


class AnygenError(Exception):
    """A mistake in user input (file, prompt, config, model directory) with a message that says what to fix."""
