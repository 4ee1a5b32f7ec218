"""`anygen plan RECIPE --gpus N --gpu-memory GB`: a decoder recipe's size, memory per device and speed, on paper.

    plan = make_plan(cfg, gpus=8, gpu_memory_gib=80)    # cfg: a TrainConfig
    print(format_plan(plan))

Every number is an estimate from the recipe alone (nothing is built or measured), with the
formula printed beside it. The trainer's layout: fp32 weights, fp32 gradients and AdamW's two
fp32 moments (`BYTES_PER_PARAMETER` = 16 bytes a parameter), bf16 autocast for activations.

Memory per device, N parameters over G devices (P_layer: one decoder layer's, P_emb: the
embedding and output matrices):

- DDP:             16·N + A
- ZeRO-2:          4·N + 12·N/G + A                 (weights replicated; gradients and AdamW sharded)
- FSDP (ZeRO-3):   16·N/G + 8·(P_emb + 2·P_layer) + A  (all sharded; in flight: the embedding unit and
                   two layers, weights and gradients gathered in fp32)

Activations A of one micro-batch of t = batch_size × seq_len tokens, in bytes: per layer and
token 12·h (norm and projection inputs, fp32 residual) + 10·(q + kv) (q/k norms, RoPE, SDPA
inputs and output; q = heads × head_dim, kv = kv_heads × head_dim) + 8·i (SwiGLU, i =
intermediate), so A = L·t·(12h + 10q + 10kv + 8i) + 10·t·V (bf16 logits, their fp32 copy and
gradient). With gradient checkpointing only each layer's input stays (4h per token) and one
layer's activations are rebuilt at a time: A = L·t·4h + t·(12h + 10q + 10kv + 8i) + 10·t·V.
CUDA context and allocator fragmentation (typically 1–3 GiB) are not counted.

Speed: training FLOPs per token 6·N' + 12·L·H·Q·T (as `anygen.training.common.flops_per_token`:
N' = the parameters in matmuls, the output projection counted, the input lookup not), and
tokens/s = G × MFU × peak / FLOPs per token.
"""

from __future__ import annotations

from dataclasses import dataclass

from anygen.errors import AnygenError
from anygen.training.common import decoder_layer_parameters, decoder_parameters

# the trainer's BYTES_PER_PARAMETER (anygen.training.common), split by what each engine shards
WEIGHT_BYTES = 4  # fp32 weights (the master copy; autocast computes in bf16)
GRAD_BYTES = 4  # fp32 gradients
ADAM_BYTES = 8  # AdamW's two fp32 moments
ACT_BYTES_PER_LAYER = (12, 10, 8)  # bytes per token and layer per unit of (h, q + kv, intermediate): see above
CHECKPOINTED_INPUT_BYTES = 4  # per token and hidden unit: the fp32 residual kept at each layer's input
LOGIT_BYTES = 10  # per token and vocab entry: bf16 logits + fp32 copy + fp32 gradient
IN_FLIGHT_LAYERS = 2  # FSDP: the unit computing and the one prefetched
PEAK_TFLOPS = 989.0  # NVIDIA H100 SXM dense bf16 tensor-core peak, TFLOP/s (datasheet; 1979 is with sparsity)
MFU = 0.40  # model-FLOPs utilisation a tuned dense decoder reaches on H100s (PaLM 46%, Llama 3 38-43%)
VOCAB_SIZE = 32768  # the vocab assumed when the recipe's own (tokenizer, shards) is not on this machine
CHINCHILLA_TOKENS_PER_PARAMETER = 20  # compute-optimal training tokens per parameter (Hoffmann et al. 2022)
GIB = 2 ** 30


@dataclass
class Plan:
    """A recipe's sizes and estimates (bytes, FLOPs, tokens); `format_plan` prints it."""

    model: object  # DecoderConfig
    vocab_size: int
    vocab_source: str
    params: int
    params_embedding: int
    params_layer: int
    gpus: int
    gpu_memory_gib: float
    batch_size: int
    seq_len: int
    grad_accum: int
    gradient_checkpointing: bool
    memory: dict  # engine -> {"weights", "grads", "adam", "in_flight", "activations", "total"} in bytes
    flops_per_token: float
    mfu: float
    peak_tflops: float

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum * self.gpus

    @property
    def tokens_per_s(self) -> float:
        return self.gpus * self.mfu * self.peak_tflops * 1e12 / self.flops_per_token


def flops_per_token(model, vocab_size: int, seq_len: int) -> float:
    """6·N' + 12·L·H·Q·T with N' = the parameters in matmuls (all but the input lookup; a tied output counts)."""
    n = decoder_parameters(model, vocab_size) - (0 if model.tie_embeddings else vocab_size * model.hidden)
    return 6 * n + 12 * model.n_layers * model.n_heads * model.head_dim * seq_len


def activation_bytes(model, vocab_size: int, tokens: int, checkpointing: bool) -> int:
    """Activations kept for the backward pass of one micro-batch of `tokens` tokens (module docstring)."""
    q, kv = model.n_heads * model.head_dim, model.n_kv_heads * model.head_dim
    a, b, c = ACT_BYTES_PER_LAYER
    layer = tokens * (a * model.hidden + b * (q + kv) + c * model.intermediate)
    logits = LOGIT_BYTES * tokens * vocab_size
    if checkpointing:
        return model.n_layers * tokens * CHECKPOINTED_INPUT_BYTES * model.hidden + layer + logits
    return model.n_layers * layer + logits


def make_plan(cfg, gpus: int, gpu_memory_gib: float, *, mfu: float = MFU, peak_tflops: float = PEAK_TFLOPS,
              vocab_size: int | None = None) -> Plan:
    """The plan of TrainConfig `cfg` on `gpus` devices of `gpu_memory_gib` GiB each.

    `vocab_size` None: the recipe's own vocab (its tokenizer, vocab file or shards) when it is on
    this machine, else `VOCAB_SIZE`; the plan says which.
    """
    if gpus < 1:
        raise AnygenError(f"--gpus must be >= 1, got {gpus}")
    if gpu_memory_gib <= 0:
        raise AnygenError(f"--gpu-memory must be positive (GiB), got {gpu_memory_gib:g}")
    if not 0 < mfu <= 1:
        raise AnygenError(f"--mfu must be in (0, 1], got {mfu:g}")
    if peak_tflops <= 0:
        raise AnygenError(f"--peak-tflops must be positive, got {peak_tflops:g}")
    if vocab_size is not None and vocab_size < 1:
        raise AnygenError(f"--vocab-size must be >= 1, got {vocab_size}")
    source = "--vocab-size"
    if vocab_size is None:
        from anygen.training.decoder_trainer import resolve_vocab

        try:
            vocab_size, source = resolve_vocab(cfg, None).size, "the recipe's data"
        except AnygenError:
            vocab_size, source = VOCAB_SIZE, "assumed; the recipe's data is not here: set --vocab-size"
    m, d, t = cfg.model, cfg.data, cfg.train
    n = decoder_parameters(m, vocab_size)
    p_layer = decoder_layer_parameters(m)
    p_emb = vocab_size * m.hidden * (1 if m.tie_embeddings else 2)
    ckpt = bool(getattr(t, "gradient_checkpointing", False))
    act = activation_bytes(m, vocab_size, d.batch_size * d.seq_len, ckpt)
    per = {"DDP": (WEIGHT_BYTES * n, GRAD_BYTES * n, ADAM_BYTES * n, 0),
           "ZeRO-2": (WEIGHT_BYTES * n, GRAD_BYTES * n / gpus, ADAM_BYTES * n / gpus, 0),
           "FSDP (ZeRO-3)": (WEIGHT_BYTES * n / gpus, GRAD_BYTES * n / gpus, ADAM_BYTES * n / gpus,
                             (WEIGHT_BYTES + GRAD_BYTES) * (p_emb + IN_FLIGHT_LAYERS * p_layer))}
    memory = {k: {"weights": w, "grads": g, "adam": o, "in_flight": f, "activations": act,
                  "total": w + g + o + f + act} for k, (w, g, o, f) in per.items()}
    return Plan(m, vocab_size, source, n, p_emb, p_layer, gpus, gpu_memory_gib, d.batch_size, d.seq_len,
                t.grad_accum, ckpt, memory, flops_per_token(m, vocab_size, d.seq_len), mfu, peak_tflops)


def _count(x: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    for unit, div in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= div:
            return f"{seconds / div:.3g} {unit}"
    return f"{seconds:.3g} s"


def format_plan(p: Plan, name: str = "") -> str:
    m = p.model
    lines = [
        f"recipe {name}: {m.n_layers} layers, hidden {m.hidden}, {m.n_heads} heads × {m.head_dim} "
        f"({m.n_kv_heads} kv), intermediate {m.intermediate}, {'tied' if m.tie_embeddings else 'untied'} embeddings, "
        f"vocab {p.vocab_size} ({p.vocab_source})",
        f"parameters: {_count(p.params)} ({p.params:,}; embeddings {_count(p.params_embedding)}, "
        f"{_count(p.params_layer)} per layer)",
        f"batch: {p.batch_size} × {p.seq_len} tokens per device and micro-batch, grad_accum {p.grad_accum}, "
        f"{p.gpus} GPU(s): {p.tokens_per_step:,} tokens per step"
        + (", gradient checkpointing" if p.gradient_checkpointing else ""),
        f"memory per device (GiB; {p.gpu_memory_gib:g} available):",
        f"  {'engine':<14}{'weights':>9}{'grads':>9}{'adam':>9}{'in flight':>11}{'activations':>13}{'total':>9}  fits",
    ]
    for engine, mem in p.memory.items():
        g = {k: v / GIB for k, v in mem.items()}
        fits = "yes" if mem["total"] <= p.gpu_memory_gib * GIB else "no"
        lines.append(f"  {engine:<14}{g['weights']:>9.2f}{g['grads']:>9.2f}{g['adam']:>9.2f}{g['in_flight']:>11.2f}"
                     f"{g['activations']:>13.2f}{g['total']:>9.2f}  {fits}")
    tps = p.tokens_per_s
    chinchilla = CHINCHILLA_TOKENS_PER_PARAMETER * p.params
    lines += [
        "  bytes: DDP 16·N; ZeRO-2 4·N + 12·N/G; FSDP 16·N/G + 8·(P_emb + 2·P_layer); activations "
        + ("L·t·4h + t·(12h + 10(q+kv) + 8i)" if p.gradient_checkpointing else "L·t·(12h + 10(q+kv) + 8i)")
        + " + 10·t·V (anygen/training/plan.py)",
        f"speed: {p.flops_per_token / 1e9:.3g} GFLOP per token (6·N' + 12·L·H·Q·T); at {p.mfu:.0%} MFU of "
        f"{p.peak_tflops:g} TFLOP/s per GPU: {tps:,.0f} tokens/s ({tps / p.gpus:,.0f} per GPU), "
        f"{_duration(p.tokens_per_step / tps)} per step",
        f"compute-optimal data ({CHINCHILLA_TOKENS_PER_PARAMETER} tokens per parameter): {_count(chinchilla)} tokens "
        f"in {_duration(chinchilla / tps)}",
    ]
    if p.gradient_checkpointing:
        lines.append("gradient checkpointing recomputes the forward pass: 8·N' instead of 6·N' FLOPs of work per "
                     "token, so the same hardware reaches about 3/4 of the MFU it would without")
    return "\n".join(lines)
