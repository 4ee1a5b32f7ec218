"""The Python API: `load_model(DIR)` -> `AnyGen` (`generator`), over a `Session` (`core`) and its
strategies (`editing`, `story`, `diffusion`, `rerank`), with typed options (`options`).

This package never imports a world: `anygen.load` looks up the worlds a model directory records
and passes their strategies (a plan format) in.
"""

from __future__ import annotations

import os
from pathlib import Path

from anygen.api.domain import DomainScore, domain_of
from anygen.api.generator import AnyGen
from anygen.api.options import DrawOptions, EditOptions, StoryOptions
from anygen.api.rerank import Verifier
from anygen.errors import AnygenError

BUNDLED_MODELS = Path(__file__).resolve().parent.parent / "assets"  # each folder with anygen_decoder.json: a model
DEFAULT_MODEL = BUNDLED_MODELS / "default"

__all__ = ["AnyGen", "DrawOptions", "EditOptions", "StoryOptions", "DEFAULT_MODEL", "DomainScore",
           "bundled_models", "default_model_dir", "domain_of", "load_model", "model_dir", "model_meta",
           "tokenizer_dir"]


def default_model_dir() -> Path:
    """$ANYGEN_MODEL, else the bundled model."""
    return Path(os.environ.get("ANYGEN_MODEL", DEFAULT_MODEL))


def bundled_models() -> dict[str, Path]:
    """The models shipped in the package, by name (`anygen.load("digits")`)."""
    return {p.name: p for p in sorted(BUNDLED_MODELS.iterdir()) if (p / "anygen_decoder.json").is_file()}


def model_dir(model: str | os.PathLike | None = None) -> Path:
    """A model directory, or a bundled model's name -> its directory (default: $ANYGEN_MODEL, else
    the bundled default model). A directory wins over a bundled model of the same name."""
    if model is None:
        return default_model_dir()
    directory = Path(model)
    if directory.is_dir():
        return directory
    bundled = bundled_models()
    if str(model) in bundled:
        return bundled[str(model)]
    raise AnygenError(f"{model}: model directory not found (bundled models: {', '.join(bundled)})")


def tokenizer_dir(spec: str | os.PathLike) -> Path:
    """A tokenizer directory (holding `tokenizer.json`), or a bundled model's name -> its `tokenizer/`
    (`default`: the bundled model's tokenizer, which every fresh clone has). A directory wins."""
    directory = Path(spec)
    if (directory / "tokenizer.json").is_file():
        return directory
    bundled = bundled_models()
    if str(spec) in bundled and (bundled[str(spec)] / "tokenizer" / "tokenizer.json").is_file():
        return bundled[str(spec)] / "tokenizer"
    raise AnygenError(f"{spec}: no tokenizer directory (tokenizer.json) and no bundled model of that name "
                      f"(bundled: {', '.join(bundled)}; `default` is the bundled model's tokenizer)")


def model_meta(directory: str | os.PathLike | None = None) -> dict:
    """What a model directory records about itself (`anygen_decoder.json`; {} for none)."""
    from anygen.model.decoder import read_decoder_meta

    return read_decoder_meta(model_dir(directory))


def load_model(directory: str | os.PathLike | None = None, device: str = "cpu", plan_format=None,
               sampler=None, verifier=None, calibrated: bool = True) -> AnyGen:
    """Load a model directory (default: $ANYGEN_MODEL or the bundled model) with the given strategies
    (`AnyGen`: a plan format for reasoned edits; a sampler and a verifier to replace, in tests). Its
    `domain.json`, when present and `calibrated`, calibrates the domain scores of inputs (`anygen.api.domain`).
    A released checkpoint's transformers directory (Emu3, Chameleon: `anygen.interop`) loads through its adapter."""
    from anygen import interop
    from anygen.api.domain import Calibration
    from anygen.model.decoder import load_decoder
    from anygen.model.transfusion import check_codec_fits, image_head_of, load_transfusion
    from anygen.tokenizer import MultimodalTokenizer

    directory = model_dir(directory)
    if interop.adapter_of(directory):
        model, tokenizer, meta = interop.load(directory, device)
        return AnyGen(model.eval(), tokenizer, plan_format=plan_format, sampler=sampler, verifier=verifier or Verifier,
                      meta=meta)
    meta = model_meta(directory)
    tok_dir = directory / "tokenizer"
    if not tok_dir.is_dir():
        raise AnygenError(f"{directory}: missing tokenizer/ directory")
    tokenizer = MultimodalTokenizer.load(tok_dir)
    model = load_decoder(directory, device=device)
    n_rows = model.get_input_embeddings().weight.shape[0]
    saved = meta.get("vocab")
    if saved and saved != tokenizer.vocab.to_dict():
        raise AnygenError(f"{directory}: the model was trained with a different vocabulary than tokenizer/ holds "
                          f"(model {saved}, tokenizer {tokenizer.vocab.to_dict()}): tokenizer and model do not match")
    if n_rows < tokenizer.vocab.size:
        raise AnygenError(f"{directory}: the model has {n_rows} token embeddings but its tokenizer needs "
                          f"{tokenizer.vocab.size}: tokenizer and model do not match")
    diffusion = None
    if image_head_of(meta) == "diffusion":
        diffusion = load_transfusion(directory, model, meta).eval()
        check_codec_fits(diffusion.head, tokenizer.image, str(directory))
    return AnyGen(model.eval(), tokenizer, diffusion=diffusion, plan_format=plan_format, sampler=sampler,
                  verifier=verifier or Verifier, meta=meta,
                  domain=Calibration.load(directory) if calibrated else None)
