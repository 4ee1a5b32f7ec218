"""Batched incremental decoding over a transformers causal LM: prefill once, then one token per step.

Two interchangeable backends with one interface — `prefill(ids, n_pad, lo, hi)` and
`step(tokens, lo, hi)` return the last position's logits for the vocabulary columns
[lo, hi) only (the sampler asks for just the ids some row may draw: the image-code range
inside an image). Rows are left-padded, so every row writes the same cache column each step.
`extend(tokens, lo, hi)` feeds n tokens per row in one forward and returns the logits after
each of them (R, n, hi-lo); `keep(k)` then keeps only the first k of those n tokens in the
cache (speculative decoding drops the rejected drafts).

- `HFDecoder`: the model's own forward with a `DynamicCache`, a 2D padding mask and
  explicit position ids. Works for any causal LM; the reference.
- `FastDecoder`: the same arithmetic for Qwen3/Qwen2/Llama-family weights written as
  ~25 tensor operations per layer over a preallocated (static) KV cache: fused QKV and
  gate/up projections with (in, out)-contiguous weights, RoPE tables computed once by the
  model's own rotary module, the padding mask as one precomputed additive row, and an
  output head restricted to the requested columns. At the shapes model's size a decode
  step is bound by per-operation overhead and small matrix products, which this cuts.
  The prepared weights (one extra copy) are cached per model and rebuilt when any
  parameter changes (tracked by tensor version counters).

Both are checked against the model's uncached full forward (tests/sampling/test_backends.py).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from anygen.model.positions import CONSECUTIVE, ImagePositions

FAST_MODEL_TYPES = ("qwen3", "qwen2", "llama")


def resolve_lm(model):
    """The transformers causal LM inside `model` (itself, or a wrapper's `.lm`/`.backbone`/`.module`)."""
    for _ in range(3):
        if hasattr(model, "lm_head") and hasattr(model, "model"):
            return model
        for name in ("lm", "backbone", "causal_lm", "module"):
            if hasattr(model, name):
                model = getattr(model, name)
                break
        else:
            break
    return model


def fast_supported(lm) -> bool:
    """Whether `FastDecoder` reproduces this model's forward (plain RoPE attention, SiLU-gated MLP)."""
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in FAST_MODEL_TYPES:
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    inner = getattr(lm, "model", None)
    need = ("embed_tokens", "layers", "norm", "rotary_emb")
    return inner is not None and all(hasattr(inner, n) for n in need) and hasattr(lm, "lm_head")


class HFDecoder:
    """Incremental decoding through the model's forward and a transformers `DynamicCache`."""

    def __init__(self, lm, n_rows: int, max_len: int, positions: ImagePositions = CONSECUTIVE):
        self.lm, self.n_rows, self.max_len, self.positions = lm, n_rows, max_len, positions
        self.device = lm.lm_head.weight.device if hasattr(lm, "lm_head") else next(lm.parameters()).device

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, n_pad: torch.Tensor, lo: int = 0, hi: int | None = None):
        from transformers import DynamicCache

        R, L = ids.shape  # (R, L)
        cols = torch.arange(self.max_len, device=self.device)
        self.attn = (cols[None, :] >= n_pad[:, None]).long()  # (R, max_len)
        self.padded = bool((n_pad > 0).any())
        self.t = L
        config = getattr(self.lm, "config", None)
        self.cache = DynamicCache(config=config) if hasattr(config, "get_text_config") else DynamicCache()
        position_ids = self.positions.align(ids, (cols[None, :L] - n_pad[:, None]).clamp(min=0))  # (R, L)
        self.pos = self.positions.after(position_ids[:, -1], ids[:, -1])  # (R,) position id of the next token
        out = self.lm(input_ids=ids, attention_mask=self.attn[:, :L] if self.padded else None,
                      position_ids=position_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, lo:hi]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, lo: int = 0, hi: int | None = None):
        t = self.t
        out = self.lm(input_ids=tokens[:, None], attention_mask=self.attn[:, : t + 1] if self.padded else None,
                      position_ids=self.pos[:, None], past_key_values=self.cache, use_cache=True)
        self.t, self.pos = t + 1, self.positions.after(self.pos, tokens)
        return out.logits[:, -1, lo:hi]

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, lo: int = 0, hi: int | None = None):
        t, n = self.t, tokens.shape[1]
        self.extended = self.positions.run(self.pos, tokens)  # (R, n+1)
        out = self.lm(input_ids=tokens, attention_mask=self.attn[:, : t + n] if self.padded else None,
                      position_ids=self.extended[:, :n], past_key_values=self.cache, use_cache=True)
        self.base, self.t, self.pos = t, t + n, self.extended[:, n]
        return out.logits[:, :, lo:hi]

    def keep(self, k: int) -> None:
        """Keep the first `k` tokens of the last `extend` in the cache."""
        drop = self.t - (self.base + k)
        if drop:
            self.cache.crop(-drop)  # transformers 5: a negative count of tokens to remove
        self.t, self.pos = self.base + k, self.extended[:, k]


_PREPARED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _weights_signature(lm) -> tuple:
    """Changes whenever a parameter is replaced or modified in place (an optimiser step)."""
    return tuple((p.data_ptr(), p._version) for p in lm.parameters())


def _prepare(lm) -> dict:
    """The decode-ready weights: fused QKV and gate/up, every matrix transposed to (in, out)
    and contiguous (the layout CPU BLAS multiplies fastest for one or two rows). Cached per
    model until its weights change."""
    sig = _weights_signature(lm)
    hit = _PREPARED.get(lm)
    if hit is not None and hit["signature"] == sig:
        return hit
    cfg, inner = lm.config, lm.model
    H = cfg.num_attention_heads
    K = getattr(cfg, "num_key_value_heads", None) or H
    first = inner.layers[0].self_attn
    D = first.head_dim

    def t(w):
        return w.detach().t().contiguous()

    def cat_bias(*mods):
        return torch.cat([m.bias.detach() for m in mods]) if mods[0].bias is not None else None

    layers = []
    with torch.no_grad():
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            if hasattr(a, "q_norm"):
                qk_w = torch.cat([a.q_norm.weight.detach().expand(H, D), a.k_norm.weight.detach().expand(K, D)])
                qk_eps = a.q_norm.variance_epsilon
            else:
                qk_w, qk_eps = None, None
            layers.append((
                layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon,
                t(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),  # (Dm, (H+2K)*D)
                cat_bias(a.q_proj, a.k_proj, a.v_proj), qk_w, qk_eps,
                t(a.o_proj.weight), None if a.o_proj.bias is None else a.o_proj.bias.detach(),  # (H*D, Dm)
                layer.post_attention_layernorm.weight.detach(), layer.post_attention_layernorm.variance_epsilon,
                t(torch.cat([m.gate_proj.weight, m.up_proj.weight])), cat_bias(m.gate_proj, m.up_proj),  # (Dm, 2I)
                t(m.down_proj.weight), None if m.down_proj.bias is None else m.down_proj.bias.detach(),  # (I, Dm)
            ))
        head = lm.lm_head
        prepared = {
            "signature": sig, "layers": layers, "n_heads": H, "n_kv": K, "head_dim": D, "scale": first.scaling,
            "embed": inner.embed_tokens.weight.detach(), "head_t": t(head.weight),  # (Dm, V)
            "head_b": None if getattr(head, "bias", None) is None else head.bias.detach(),
            "norm": (inner.norm.weight.detach(), inner.norm.variance_epsilon),
        }
    _PREPARED[lm] = prepared
    return prepared


def _mm(x, w_t, b):
    """x (R, in) @ w_t (in, out) [+ b] in one BLAS call."""
    return torch.mm(x, w_t) if b is None else torch.addmm(b, x, w_t)


class FastDecoder:
    """The same forward as a Qwen3/Llama module stack, as a lean loop over a static KV cache."""

    def __init__(self, lm, n_rows: int, max_len: int, positions: ImagePositions = CONSECUTIVE):
        w = _prepare(lm)
        self.positions = positions
        self.layers, self.embed, self.head_t, self.head_b, self.norm = (
            w["layers"], w["embed"], w["head_t"], w["head_b"], w["norm"])
        self.n_heads, self.n_kv, self.head_dim, self.scale = w["n_heads"], w["n_kv"], w["head_dim"], w["scale"]
        self.group = self.n_heads // self.n_kv
        self.n_rows, self.max_len = n_rows, max_len
        self.device, self.dtype = self.head_t.device, self.head_t.dtype
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        # RoPE tables from the model's own rotary module (honours its rope scaling); the
        # sine carries rotate_half's sign so that rotate_half(x) * sin == x.roll(D/2) * sin_signed.
        pos = torch.arange(positions.max_position(max_len), device=self.device)[None]
        probe = torch.zeros(1, 1, D, device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            cos, sin = lm.model.rotary_emb(probe, pos)  # (1, P, D), P = the largest position + 1
        sign = torch.cat([-torch.ones(D // 2), torch.ones(D - D // 2)]).to(self.device, self.dtype)
        self.cos, self.sin = cos[0].to(self.dtype), (sin[0] * sign).to(self.dtype)  # (P, D)
        n_layers = len(self.layers)
        self.kv = torch.zeros(n_layers, 2, n_rows, K, max_len, D, device=self.device, dtype=self.dtype)
        self.k_caches = [self.kv[i, 0] for i in range(n_layers)]  # (R, K, max_len, D) views
        self.v_caches = [self.kv[i, 1] for i in range(n_layers)]
        self.fp32 = self.dtype == torch.float32

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of `ids` (R, n) or (R,); a model whose inputs are not all token ids (a
        released checkpoint's image route, `anygen.interop.janus`) overrides it."""
        return F.embedding(ids, self.embed)

    def _rms(self, x, w, eps):
        """transformers' RMSNorm, operation for operation (fp32 statistics, weight after the downcast)."""
        n = x.shape[-1]  # sum then divide: what `mean` does, minus its dtype round trip
        if self.fp32:
            return x * (x * x).sum(-1, keepdim=True).div_(n).add_(eps).rsqrt_() * w
        y = x.float()
        return w * (y * (y * y).sum(-1, keepdim=True).div_(n).add_(eps).rsqrt_()).to(x.dtype)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, n_pad: torch.Tensor, lo: int = 0, hi: int | None = None):
        R, L = ids.shape  # (R, L)
        cols = torch.arange(self.max_len, device=self.device)
        valid = cols[None, :] >= n_pad[:, None]  # (R, max_len) key columns holding prompt/outputs
        self.padded = bool((n_pad > 0).any())
        self.valid = valid
        neg = torch.finfo(self.dtype).min
        self.mask = None
        prefill_mask = None
        if self.padded:
            self.mask = torch.zeros(R, 1, 1, self.max_len, device=self.device, dtype=self.dtype)
            self.mask.masked_fill_(~valid[:, None, None, :], neg)  # (R, 1, 1, max_len)
            causal = torch.ones(L, L, dtype=torch.bool, device=self.device).tril()
            allowed = causal[None] & valid[:, None, :L]
            allowed |= torch.eye(L, dtype=torch.bool, device=self.device)[None]  # pad queries see themselves
            prefill_mask = torch.zeros(R, 1, L, L, device=self.device, dtype=self.dtype)
            prefill_mask.masked_fill_(~allowed[:, None], neg)
        pos = self.positions.align(ids, (cols[None, :L] - n_pad[:, None]).clamp(min=0))  # (R, L)
        h = self._block(ids, pos, 0, prefill_mask)
        self.t = L
        self.pos = self.positions.after(pos[:, -1], ids[:, -1])  # (R,)
        return self._head(h.view(R, L, -1)[:, -1], lo, hi)

    def _block(self, ids, pos, t, mask):
        """Hidden states (R*n, Dm) of `ids` (R, n) at positions `pos` (R, n), written to cache columns
        [t, t+n) and attending to the columns before them; `mask` (R, 1, n, t+n) additive, or None: causal."""
        R, n = ids.shape
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (R, n, 1, D)
        h = self._embed(ids).reshape(R * n, -1)  # (R*n, Dm)
        rms = self._rms
        for (w_in, e_in, qkv_t, qkv_b, qk_w, qk_eps, o_t, o_b, w_post, e_post, gu_t, gu_b, d_t, d_b), \
                k_cache, v_cache in zip(self.layers, self.k_caches, self.v_caches):
            qkv = _mm(rms(h, w_in, e_in), qkv_t, qkv_b).view(R, n, -1)  # (R, n, (H+2K)*D)
            qk = qkv[..., : (H + K) * D].reshape(R, n, H + K, D)
            if qk_w is not None:
                qk = rms(qk, qk_w, qk_eps)
            qk = qk * cos + qk.roll(D // 2, -1) * sin
            k_cache[:, :, t:t + n] = qk[:, :, H:].transpose(1, 2)  # (R, K, n, D)
            v_cache[:, :, t:t + n] = qkv[..., (H + K) * D:].reshape(R, n, K, D).transpose(1, 2)
            att = F.scaled_dot_product_attention(qk[:, :, :H].transpose(1, 2), k_cache.narrow(2, 0, t + n),
                                                 v_cache.narrow(2, 0, t + n), attn_mask=mask,
                                                 is_causal=mask is None, scale=self.scale,
                                                 enable_gqa=self.group > 1)  # (R, H, n, D)
            h = h + _mm(att.transpose(1, 2).reshape(R * n, H * D), o_t, o_b)
            g, u = _mm(rms(h, w_post, e_post), gu_t, gu_b).chunk(2, -1)
            h = h + _mm(F.silu(g) * u, d_t, d_b)
        return h

    def _head(self, h, lo, hi):
        """Logits of the vocabulary columns [lo, hi) only (None when the range is empty)."""
        if hi is None:
            hi = self.head_t.shape[1]
        if hi <= lo:
            return None
        b = None if self.head_b is None else self.head_b[lo:hi]
        return _mm(self._rms(h, *self.norm), self.head_t[:, lo:hi], b)  # (R, hi-lo)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, lo: int = 0, hi: int | None = None, hold: torch.Tensor | None = None):
        """One token per row; rows where `hold` (R,) is True skip this step: their slot is masked
        for good and their position kept (their logits this step mean nothing)."""
        R = tokens.shape[0]
        H, K, D, G = self.n_heads, self.n_kv, self.head_dim, self.group
        t = self.t
        pos = self.pos
        if hold is not None:
            if self.mask is None:
                self.mask = torch.zeros(R, 1, 1, self.max_len, device=self.device, dtype=self.dtype)
            self.mask[:, 0, 0, t].masked_fill_(hold, torch.finfo(self.dtype).min)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # (R, 1, D)
        mask = self.mask.narrow(3, 0, t + 1) if self.mask is not None else None  # (R, 1, 1, t+1)
        rms = self._rms
        split = ((H + K) * D, K * D)
        h = self._embed(tokens)  # (R, Dm)
        half = D // 2
        for (w_in, e_in, qkv_t, qkv_b, qk_w, qk_eps, o_t, o_b, w_post, e_post, gu_t, gu_b, d_t, d_b), \
                k_cache, v_cache in zip(self.layers, self.k_caches, self.v_caches):
            qk, v = _mm(rms(h, w_in, e_in), qkv_t, qkv_b).split(split, -1)  # (R, (H+K)*D), (R, K*D)
            qk = qk.view(R, H + K, D)
            if qk_w is not None:
                qk = rms(qk, qk_w, qk_eps)
            qk = qk * cos + qk.roll(half, -1) * sin  # RoPE, (R, H+K, D)
            q, k = qk.split((H, K), 1)
            k_cache.select(2, t).copy_(k)
            v_cache.select(2, t).copy_(v.view(R, K, D))
            # grouped-query attention as G queries per KV head: no K/V expansion
            att = F.scaled_dot_product_attention(q.reshape(R, K, G, D), k_cache.narrow(2, 0, t + 1),
                                                 v_cache.narrow(2, 0, t + 1), attn_mask=mask, scale=self.scale)
            h = torch.addmm(h, att.view(R, H * D), o_t)
            if o_b is not None:
                h = h + o_b
            g, u = _mm(rms(h, w_post, e_post), gu_t, gu_b).chunk(2, -1)  # (R, I) each
            h = torch.addmm(h, F.silu(g).mul_(u), d_t)
            if d_b is not None:
                h = h + d_b
        after = self.positions.after(pos, tokens)
        self.t, self.pos = t + 1, after if hold is None else torch.where(hold, pos, after)
        return self._head(h, lo, hi)

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, lo: int = 0, hi: int | None = None):
        R, n = tokens.shape
        t = self.t
        self.extended = self.positions.run(self.pos, tokens)  # (R, n+1)
        pos = self.extended[:, :n]
        cols = torch.arange(t + n, device=self.device)
        allowed = cols[None, :] <= t + torch.arange(n, device=self.device)[:, None]  # (n, t+n) causal
        allowed = allowed[None] & self.valid[:, None, : t + n]  # (R, n, t+n)
        mask = torch.zeros(R, 1, n, t + n, device=self.device, dtype=self.dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)
        h = self._block(tokens, pos, t, mask)
        self.base, self.t, self.pos = t, t + n, self.extended[:, n]
        out = self._head(h, lo, hi)
        return None if out is None else out.view(R, n, -1)

    def keep(self, k: int) -> None:
        """Keep the first `k` tokens of the last `extend` (the later columns are overwritten next)."""
        self.t, self.pos = self.base + k, self.extended[:, k]


def make_decoder(lm, n_rows: int, max_len: int, backend: str = "auto", positions: ImagePositions = CONSECUTIVE):
    """`FastDecoder` where it reproduces the model (backend 'auto'/'fast'), else `HFDecoder`; a model
    that brings its own decoder (`lm.anygen_decoder(n_rows, max_len, positions, backend)`, e.g. a released
    checkpoint fed through `anygen.interop`) uses that one."""
    own = getattr(lm, "anygen_decoder", None)
    if own is not None:
        return own(n_rows, max_len, positions, backend)
    if backend == "hf":
        return HFDecoder(lm, n_rows, max_len, positions)
    if fast_supported(lm):
        return FastDecoder(lm, n_rows, max_len, positions)
    if backend == "fast":
        raise ValueError(f"the fast decoder does not support {type(lm).__name__} "
                         f"(model_type {getattr(lm.config, 'model_type', '?')}); use backend='hf'")
    return HFDecoder(lm, n_rows, max_len, positions)


def kv_bytes_per_token(lm) -> int | None:
    """Bytes one row's KV cache takes per token (keys and values of every layer, in the weights'
    dtype), from the model's config; None when the config does not give the attention shape."""
    cfg = getattr(lm, "config", None)
    try:
        heads = int(cfg.num_attention_heads)
        kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        layers = int(cfg.num_hidden_layers)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * _element_size(lm)


def decode_bytes_per_row(lm, prompt_len: int, max_len: int) -> int | None:
    """Bytes a decoder of `max_len` tokens holds per row: the KV cache (`FastDecoder` allocates all
    of it at once, `HFDecoder` grows to it) and the prefill's (prompt_len, prompt_len) padding mask."""
    per_token = kv_bytes_per_token(lm)
    if per_token is None:
        return None
    return per_token * max_len + prompt_len * prompt_len * _element_size(lm)


def _element_size(lm) -> int:
    weight = next(iter(lm.parameters()), None)
    return weight.element_size() if weight is not None else 4


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device` (the GPU's free memory, else the host's available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available
