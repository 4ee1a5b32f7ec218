"""anygen: unified tokenizer-based any-to-any generation (text, images, audio)."""

__version__ = "0.1.0"


def load(directory=None, device: str = "cpu"):
    """Load a model directory (default: the bundled model) -> `anygen.pipeline.AnyGen`."""
    from anygen.pipeline import load as _load

    return _load(directory, device)
