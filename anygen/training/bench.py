"""`anygen bench train`: decoder training throughput (tokens/s) and model-FLOPs utilisation.

    measure_mfu(DecoderConfig(), vocab=3034, seq_len=512, batch_size=8) -> dict
    measure_recipe_mfu("training/shapes.yaml", ["train.threads=1"]) -> dict

Training FLOPs per token are `anygen.training.common.flops_per_token` (6·N + 12·L·H·Q·T);
the peak is an n×n×n fp32 matmul measured in the same process and threads right before
each step, so load from other processes hits both alike.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from anygen.errors import AnygenError
from anygen.model.decoder import (DecoderConfig, LossConfig, build_decoder, count_parameters, decoder_loss,
                                  forward_logits)
from anygen.threads import set_threads
from anygen.training.common import flops_per_token
from anygen.training.decoder_trainer import (SyntheticBatches, init_pretrained, load_train_config, resolve_vocab,
                                             weight_decay_groups)
from anygen.vocab import Vocab

N_SPECIALS = 10  # ids besides text and image codes in a vocab made from a size: specials + one grid token


def matmul_peak_flops(n: int = 1024, reps: int = 10, dtype: torch.dtype = torch.float32, device="cpu") -> float:
    """Best observed FLOP/s of an n×n×n matmul (2n³ FLOPs) on this process's threads."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps + 2):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def measure_mfu(model_cfg: DecoderConfig | None = None, vocab: Vocab | int = 2048, *, seq_len: int = 512,
                batch_size: int = 8, steps: int = 8, warmup: int = 2, threads: int | None = None,
                packed: bool = True, matmul_n: int = 1024, seed: int = 0, model=None) -> dict:
    """Training tokens/s and model-FLOPs utilisation against a matmul peak measured in this process.

    Runs the trainer's own step (packed forward, CE + z-loss, backward, clipping, AdamW)
    in fp32 on CPU. Other processes on a shared machine slow both the model and the
    matmul, so a short matmul peak is measured right before every step and each step's
    MFU is its achieved FLOP/s over that neighbouring peak; `mfu` is the median of those,
    `mfu_vs_best_peak` the median achieved FLOP/s over the best peak seen (conservative).
    `model` (sized to `vocab`, a Vocab then) replaces the one `model_cfg` builds; FLOPs count
    every parameter as trained (6·N), also frozen ones, whose weight gradients are skipped.
    """
    if threads:
        set_threads(threads, "threads")
    model_cfg = model_cfg or DecoderConfig()
    if isinstance(vocab, int):
        n_text = max(16, vocab // 2)
        vocab = Vocab(n_text=n_text, image_codebook_size=vocab - n_text - N_SPECIALS)
    if model is None:
        model = build_decoder(model_cfg, vocab, seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95), foreach=True)
    doc_len = (max(2, seq_len // 4), seq_len) if packed else (seq_len, seq_len)
    data = SyntheticBatches(vocab, seq_len, batch_size, seed, doc_len=doc_len)
    batches = [data.batch(k) for k in range(2)]
    loss_cfg = LossConfig()
    fpt, n = flops_per_token(model, seq_len)
    tokens = batch_size * seq_len
    times, peaks = [], []
    for i in range(warmup + steps):
        peak = matmul_peak_flops(matmul_n, reps=3)
        batch = batches[i % 2]
        t0 = time.perf_counter()
        logits = forward_logits(model, batch, model_cfg.attn_implementation)
        loss, _ = decoder_loss(logits, batch["labels"], loss_cfg, vocab, batch["document_ids"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            peaks.append(peak)
    step_s = statistics.median(times)
    tps = tokens / step_s
    return {"tokens_per_s": tps, "step_s": step_s, "flops_per_token": fpt, "matmul_params": n,
            "params": count_parameters(model), "achieved_flops": fpt * tps,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_flops": statistics.median(peaks), "best_peak_flops": max(peaks),
            "mfu": statistics.median(fpt * tokens / t / p for t, p in zip(times, peaks)),
            "mfu_vs_best_peak": fpt * tps / max(peaks),
            "threads": torch.get_num_threads(), "seq_len": seq_len, "batch_size": batch_size,
            "vocab_size": vocab.size, "steps": steps}


def measure_recipe_mfu(recipe_path: str | os.PathLike | None, overrides: list[str] = (), steps: int = 8) -> dict:
    """measure_mfu with a recipe's model, seq_len, batch_size, threads and vocab (random tokens); with
    `train.init_from`, the pretrained model the trainer would start from (`init_pretrained`, which
    needs the recipe's vocab)."""
    cfg = load_train_config(recipe_path, overrides)
    model = None
    if cfg.train.init_from:
        vocab: Vocab | int = resolve_vocab(cfg, None)
        if cfg.train.threads:
            set_threads(cfg.train.threads, "train.threads")
        model = init_pretrained(cfg, vocab)
    else:
        try:
            vocab = resolve_vocab(cfg, None)
        except (AnygenError, OSError):
            vocab = 2048
    return measure_mfu(cfg.model, vocab, seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size, steps=steps,
                       threads=cfg.train.threads or None, model=model)
