"""anygen: unified tokenizer-based any-to-any generation (text, images, audio)."""

__version__ = "0.1.0"


def load(directory=None, device: str = "cpu"):
    """Load a model directory or a bundled model by name (`load("digits")`; default: $ANYGEN_MODEL
    or the bundled default model) -> `anygen.api.AnyGen`.

    The worlds the directory records (`anygen_decoder.json` "worlds") bring their strategies:
    the first one with a plan format enables reasoned edits.
    """
    from anygen.api import load_model, model_meta
    from anygen.worlds import plan_format_of

    return load_model(directory, device, plan_format=plan_format_of(model_meta(directory).get("worlds", ())))
