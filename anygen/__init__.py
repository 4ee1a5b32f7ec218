"""anygen: unified tokenizer-based any-to-any generation (text, images, audio)."""

__version__ = "0.1.0"
