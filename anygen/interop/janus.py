"""Janus and Janus-Pro (transformers `JanusForConditionalGeneration`) as an anygen model.

Janus reads and draws images by two different routes, and anygen keeps one image span
`<boi> <grid_HxW> codes <eoi>` for both, choosing the route by where the codes come from:

- an image *in the prompt* (a complete span: its `<eoi>` is in the prompt) is read as Janus's
  processor writes it, `<begin_of_image> <image_placeholder>*N <end_of_image>`, the N placeholders
  replaced by the SigLIP features (vision model + aligner) of the image's pixels. anygen holds an
  image as VQ codes, so the pixels are the VQ-VAE's decoding of its codes (`JanusLM.read_pixels`):
  Janus reads what the codes show, not the photo before coding;
- codes the model *draws* (and the codes of a span left open at the end of the prompt) are fed
  through the generation embeddings and aligner and scored by the generation head, as in
  `generate(generation_mode="image")`; text and the special tokens are fed through the language
  model's embeddings and scored by its head.

`<boi>` is `<begin_of_image>`, `<eoi>` `<end_of_image>`, `<grid_HxW>` and `<null>` are fed as
nothing. Guidance: Janus's unconditional row is the prompt with every id but the first (begin of
sequence) masked to padding (its `generate` masks all but BOS and `<begin_of_image>`), same length,
attended; `JanusLM.guidance_prompt` writes that row in anygen ids for the API. Its guidance
formula, `uncond + scale * (cond - uncond)` on the logits, is anygen's.

The image grid is the VQ-VAE's (`num_patches` per side), which must equal the vision model's
patch grid (Janus's processor: 576 placeholders for 24 x 24 codes at 384 pixels).
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image as PILImage

from anygen.errors import AnygenError
from anygen.interop.base import IdMap, InteropLM, ModelText, open_parts
from anygen.tokenizer import MultimodalTokenizer
from anygen.vocab import SPECIAL_TOKENS, Vocab

MODEL_TYPE = "janus"
TASKS = ("text_to_image", "image_to_text", "document")
WHY_NOT = {"edit": "Janus has no image-editing mode (it draws from text and reads images)",
           "text_to_audio": "it has no audio codec", "audio_to_text": "it has no audio codec"}
BOI, EOI, PLACEHOLDER = "<begin_of_image>", "<end_of_image>", "<image_placeholder>"


class JanusCodec:
    """Janus's VQ-VAE as an anygen image codec: PIL images <-> codes (B, H, W), pixels normalised
    with the image processor's mean and std (as Janus's processor feeds and post-processes them)."""

    def __init__(self, vqmodel, processor):
        self.vq = vqmodel
        side = int(vqmodel.config.num_patches)
        self.grid = (side, side)
        self.codebook_size = int(vqmodel.config.num_embeddings)
        self.factor = 2 ** (len(vqmodel.config.channel_multiplier) - 1)
        self.image_size = side * self.factor
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def eval(self):
        return self

    def pixel_values(self, images) -> torch.Tensor:
        s = self.image_size
        arr = np.stack([np.asarray(im.convert("RGB").resize((s, s), PILImage.Resampling.BICUBIC), dtype=np.float32)
                        for im in images]) / 255.0
        return (torch.from_numpy(arr).permute(0, 3, 1, 2) - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images) -> torch.LongTensor:
        if not images:
            return torch.zeros((0, *self.grid), dtype=torch.long)
        x = self.pixel_values(images).to(self.vq.device, self.vq.dtype)
        codes = self.vq.encode(x, return_dict=True).image_tokens
        return codes.long().cpu().view(len(images), *self.grid)

    @torch.no_grad()
    def decode_normalised(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, H, W) -> the VQ-VAE's output (B, 3, S, S), in the processor's normalised space."""
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise AnygenError(f"image codes must be (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)}")
        return self.vq.decode(codes.long().reshape(len(codes), -1).to(self.vq.device))

    def decode_images(self, codes: torch.Tensor) -> list:
        x = self.decode_normalised(codes).float().cpu() * self.std + self.mean
        pixels = (x * 255).round().clamp(0, 255).to(torch.uint8)
        return [PILImage.fromarray(np.ascontiguousarray(p.permute(1, 2, 0).numpy())) for p in pixels]


class JanusLM(InteropLM):
    """Janus as the sampler drives it (see the module docstring): the language model body, its head
    for text and specials, the generation head for codes, and the two image routes."""

    def __init__(self, hf, idmap: IdMap, codec: JanusCodec, context: int, bos: int, pad: int):
        super().__init__(hf, hf.model.language_model, hf.lm_head, idmap, context, MODEL_TYPE)
        self.codec, self.bos, self.model_pad = codec, bos, pad

    # -- the two image routes --
    @torch.no_grad()
    def read_pixels(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes of prompt images -> (B, H*W, D) SigLIP features (vision model + aligner)
        of the VQ-VAE's decoding, the embeddings Janus puts in place of the placeholders."""
        pixels = self.codec.decode_normalised(codes)
        return self.hf.model.get_image_features(pixels.to(self.hf.dtype), return_dict=True).pooler_output

    def code_embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """Drawn codes (N,) -> (N, D): the generation embeddings through the generation aligner."""
        return self.hf.prepare_embeddings_for_image_generation(codes.to(self.head_rows()[0].device))

    def guidance_prompt(self, cond: list[int]) -> list[int]:
        """Janus's unconditional row for prompt `cond` (anygen ids): `<bos>` then `<pad>` for every
        model id the rest of `cond` feeds (see the module docstring)."""
        v = self.idmap.vocab
        n = sum(len(self.idmap.expansion(t)) for t in cond[1:])
        return [cond[0]] + [v.pad] * n

    def step_embeddings(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(R,) drawn anygen ids -> (R, D) embeddings in one batch when each feeds exactly one (text,
        a special of one id, a drawn code), else None (`embed_rows` handles the rest)."""
        if getattr(self, "_single", None) is None:
            v = self.idmap.vocab
            single = torch.full((v.size,), -1, dtype=torch.long)
            for t in range(v.size):
                try:
                    e = self.idmap.expansion(t)
                except AnygenError:
                    continue
                if len(e) == 1:
                    single[t] = e[0]
            object.__setattr__(self, "_single", single.to(self.head_rows()[0].device))
        v, tokens = self.idmap.vocab, tokens.to(self._single.device)
        model_ids = self._single[tokens]
        if bool((model_ids < 0).any()):
            return None
        x = self.hf.get_input_embeddings()(model_ids)
        codes = (tokens >= v.image_start) & (tokens < v.audio_start)
        if bool(codes.any()):
            x = x.clone()
            x[codes] = self.code_embeddings(tokens[codes] - v.image_start).to(x.dtype)
        return x

    # -- rows of anygen ids -> embeddings --
    def embed_rows(self, rows: list[list[int]], prompt: bool) -> tuple[list[torch.Tensor], list[list[int]]]:
        """Each row's input embeddings (n_i, D) and, per anygen id, the index of its last embedding
        (-1 before the first). `prompt`: complete image spans are read (`read_pixels`); other codes
        are drawn codes (`code_embeddings`)."""
        v, device = self.idmap.vocab, self.head_rows()[0].device
        embed = self.hf.get_input_embeddings()
        plans, reads = [], []
        for row in rows:
            plan, at, n = [], [], 0
            for t, tok in enumerate(row):
                is_code = v.image_start <= tok < v.audio_start
                if is_code and prompt and self._complete_span_at(row, t):
                    plan.append(("read", tok))
                    n += 1
                elif is_code:
                    plan.append(("draw", tok - v.image_start))
                    n += 1
                else:
                    for m in self.idmap.expansion(tok):
                        plan.append(("id", m))
                        n += 1
                at.append(n - 1)
            plans.append((plan, at))
            reads.append([c - v.image_start for kind, c in plan if kind == "read"])
        # every complete prompt image, in one batch through the VQ decoder and SigLIP
        grid = self.codec.grid
        per_image = grid[0] * grid[1]
        all_reads = [c for r in reads for c in r]
        features = (self.read_pixels(torch.tensor(all_reads).view(-1, *grid)).reshape(-1, embed.weight.shape[1])
                    if all_reads else None)
        if all_reads and len(all_reads) % per_image:
            raise AnygenError(f"{MODEL_TYPE}: a prompt image holds {len(all_reads)} codes, not whole "
                              f"{grid[0]}x{grid[1]} images")
        out, k = [], 0
        for plan, _ in plans:
            ids = torch.tensor([m if kind == "id" else self.model_pad for kind, m in plan], dtype=torch.long,
                               device=device)
            e = embed(ids) if len(plan) else embed.weight[:0]
            draws = [i for i, (kind, _) in enumerate(plan) if kind == "draw"]
            if draws:
                e = e.clone()
                e[draws] = self.code_embeddings(torch.tensor([plan[i][1] for i in draws])).to(e.dtype)
            readpos = [i for i, (kind, _) in enumerate(plan) if kind == "read"]
            if readpos:
                e = e.clone()
                e[readpos] = features[k:k + len(readpos)].to(e.device, e.dtype)
                k += len(readpos)
            out.append(e)
        return out, [at for _, at in plans]

    def _complete_span_at(self, row: list[int], t: int) -> bool:
        """Whether the code at `t` belongs to an image span closed by `<eoi>` later in `row`."""
        v = self.idmap.vocab
        for tok in row[t + 1:]:
            if tok == v.eoi:
                return True
            if not v.image_start <= tok < v.audio_start:
                return False
        return False

    def logits_of(self, hidden: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor | None:
        """Logits in anygen columns [lo, hi) of final hidden states (..., D): codes from the generation
        head, every other id from the language model's head (-inf where never drawn)."""
        rows, bias = self.head_rows()
        v = self.idmap.vocab
        hi = rows.shape[0] if hi is None else hi
        if hi <= lo:
            return None
        flat = hidden.reshape(-1, hidden.shape[-1])
        c_lo, c_hi = max(lo, v.image_start), min(hi, v.audio_start)
        if c_lo >= c_hi:  # no code column: the language model's head alone
            return torch.addmm(bias[lo:hi], flat, rows[lo:hi].t()).view(*hidden.shape[:-1], hi - lo)
        out = torch.empty(flat.shape[0], hi - lo, dtype=rows.dtype, device=rows.device)
        for a, b in ((lo, c_lo), (c_hi, hi)):  # the columns before and after the codes
            if a < b:
                out[:, a - lo:b - lo] = torch.addmm(bias[a:b], flat, rows[a:b].t())
        gen = self.hf.model.generation_head(flat)
        out[:, c_lo - lo:c_hi - lo] = gen[:, c_lo - v.image_start:c_hi - v.image_start].to(out.dtype)
        return out.view(*hidden.shape[:-1], hi - lo)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        """Full-sequence logits (B, T, V) in anygen ids (for scoring), prompt images read (see `embed_rows`)."""
        B, T = input_ids.shape
        valid = attention_mask.bool().tolist() if attention_mask is not None else [[True] * T] * B
        rows = [[t for t, ok in zip(row, valid[r]) if ok] for r, row in enumerate(input_ids.tolist())]
        embeds, ats = self.embed_rows(rows, prompt=True)
        L = max(1, max(len(e) for e in embeds))
        D = self.head_rows()[0].shape[1]
        device = self.head_rows()[0].device
        x = torch.zeros(B, L, D, dtype=self.head_rows()[0].dtype, device=device)
        mask = torch.zeros(B, L, dtype=torch.long, device=device)
        where = torch.zeros(B, T, dtype=torch.long, device=device)
        for r, (e, at) in enumerate(zip(embeds, ats)):
            x[r, :len(e)], mask[r, :len(e)] = e, 1
            full, j = [], 0
            for t in range(T):
                if valid[r][t]:
                    j += 1
                full.append(max(at[j - 1], 0) if j else 0)
            where[r] = torch.tensor(full, device=device)
        hidden = self._body(inputs_embeds=x, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                            use_cache=False).last_hidden_state
        picked = hidden.gather(1, where[..., None].expand(B, T, hidden.shape[-1]))
        return SimpleNamespace(logits=self.logits_of(picked))

    def anygen_decoder(self, n_rows: int, max_len: int, positions=None, backend: str = "auto"):
        """`FastDecoder` over the Llama body fed Janus's embeddings (`JanusFastDecoder`), or with
        backend "hf" the language model's own forward (`JanusDecoder`)."""
        if backend == "hf":
            return JanusDecoder(self, n_rows)
        return _fast_decoder_class()(self, n_rows, max_len)


class JanusDecoder:
    """`prefill`/`step` in anygen ids over Janus's language model forward with a `DynamicCache` (backend
    "hf"); rows whose step feeds fewer embeddings (a `<grid>`: none) are padded inside the cache and masked."""

    def __init__(self, lm: JanusLM, n_rows: int):
        self.lm, self.n_rows = lm, n_rows

    def _feed(self, embeds: list[torch.Tensor]) -> None:
        R, lm = len(embeds), self.lm
        lengths = torch.tensor([len(e) for e in embeds])
        k = int(lengths.max())
        if k == 0:
            return
        rows, _ = lm.head_rows()
        x = torch.zeros(R, k, rows.shape[1], dtype=rows.dtype, device=rows.device)
        mask = torch.zeros(R, k, dtype=torch.long)
        for r, e in enumerate(embeds):
            if len(e):
                x[r, k - len(e):] = e
                mask[r, k - len(e):] = 1
        pos = self.next_pos[:, None] + (mask.cumsum(1) - 1).clamp(min=0)
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], 1)
        out = lm._body(inputs_embeds=x, attention_mask=self.mask.to(rows.device), position_ids=pos.to(rows.device),
                       cache=self.cache, use_cache=True)
        h = out.last_hidden_state[:, -1]
        fed = (lengths > 0).to(rows.device)
        self.h = h if self.h is None else torch.where(fed[:, None], h, self.h)
        self.next_pos += lengths

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, n_pad: torch.Tensor, lo: int = 0, hi: int | None = None):
        from transformers import DynamicCache

        rows = [ids[r, int(n_pad[r]):].tolist() for r in range(ids.shape[0])]
        self.cache, self.mask, self.h = DynamicCache(), None, None
        self.next_pos = torch.zeros(len(rows), dtype=torch.long)
        embeds, _ = self.lm.embed_rows(rows, prompt=True)
        self._feed(embeds)
        return self.lm.logits_of(self.h, lo, hi)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, lo: int = 0, hi: int | None = None):
        x = self.lm.step_embeddings(tokens)
        embeds = list(x[:, None]) if x is not None else self.lm.embed_rows([[t] for t in tokens.tolist()],
                                                                            prompt=False)[0]
        self._feed(embeds)
        return self.lm.logits_of(self.h, lo, hi)


def load(directory: str | os.PathLike, device: str = "cpu"):
    """A Janus directory -> (JanusLM, MultimodalTokenizer, meta) for `anygen.api.AnyGen`."""
    from pathlib import Path

    from transformers import JanusForConditionalGeneration
    from transformers import JanusImageProcessorPil  # the PIL processor: no torchvision needed

    directory = Path(directory)
    hf, tokenizer, processor = open_parts(directory, JanusForConditionalGeneration, JanusImageProcessorPil, device)
    where = f"{directory}/config.json: {MODEL_TYPE}"
    text_cfg = hf.config.text_config
    gen_cfg = hf.generation_config
    bos = gen_cfg.bos_token_id if gen_cfg.bos_token_id is not None else text_cfg.bos_token_id
    eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else text_cfg.eos_token_id
    pad = gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else text_cfg.pad_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0]
    if bos is None or eos is None or pad is None:
        raise AnygenError(f"{where}: the config needs bos, eos and pad token ids")
    ids = {}
    for name in (BOI, EOI, PLACEHOLDER):
        i = tokenizer.convert_tokens_to_ids(name)
        if i is None or i == tokenizer.unk_token_id:
            raise AnygenError(f"{MODEL_TYPE}: the tokenizer has no {name} token")
        ids[name] = int(i)
    if ids[PLACEHOLDER] != hf.config.image_token_id:
        raise AnygenError(f"{where}: image_token_id {hf.config.image_token_id} is not the tokenizer's {PLACEHOLDER}")
    codec = JanusCodec(hf.model.vqmodel, processor)
    vision = hf.config.vision_config
    patches = vision.image_size // vision.patch_size
    if codec.grid != (patches, patches) or patches * patches != vision.num_image_tokens:
        raise AnygenError(f"{where}: the VQ-VAE's {codec.grid[0]}x{codec.grid[1]} codes and the vision model's "
                          f"{patches}x{patches} patches ({vision.num_image_tokens} image tokens) differ")
    if codec.image_size != vision.image_size:
        raise AnygenError(f"{where}: the VQ-VAE draws {codec.image_size}-pixel images, the vision model reads "
                          f"{vision.image_size}")
    n_model = int(text_cfg.vocab_size)
    skip = {int(bos), int(eos), int(pad)} | set(ids.values())
    text_ids = [i for i in range(n_model) if i not in skip]
    vocab = Vocab(n_text=len(text_ids), image_codebook_size=codec.codebook_size, image_grids=(codec.grid,))
    specials = {name: () for name in SPECIAL_TOKENS}
    specials.update({"<pad>": (int(pad),), "<bos>": (int(bos),), "<eos>": (int(eos),), "<boi>": (ids[BOI],),
                     "<eoi>": (ids[EOI],), Vocab.grid_token(codec.grid): ()})
    scores = {"<pad>": int(pad), "<eos>": int(eos), "<boi>": ids[BOI], "<eoi>": ids[EOI]}
    codes = (ids[PLACEHOLDER],) * codec.codebook_size  # prompt codes stand in the placeholders' slots
    idmap = IdMap(vocab, tuple(text_ids), codes, specials, scores, None, int(pad))
    lm = JanusLM(hf, idmap, codec, int(text_cfg.max_position_embeddings), int(bos), int(pad))
    meta = {"architecture": "JanusForConditionalGeneration", "model_type": MODEL_TYPE, "tasks": list(TASKS),
            "why_not": WHY_NOT}
    return lm, MultimodalTokenizer(ModelText(tokenizer, text_ids, n_model), codec), meta


@functools.cache
def _fast_decoder_class():
    """`JanusFastDecoder`, defined on first use (`FastDecoder` lives in the sampler, which imports the API)."""
    from anygen.sampling.backends import FastDecoder

    class JanusFastDecoder(FastDecoder):
        """`FastDecoder` over Janus's Llama body, fed the embeddings `JanusLM.embed_rows` gives (text,
        read images, drawn codes) and scored by `JanusLM.logits_of`'s two heads. A step whose ids feed
        several embeddings runs one sub-step each, shorter rows held (right-aligned); one that feeds
        none (`<grid>`) keeps each row's last hidden state."""

        def __init__(self, lm: JanusLM, n_rows: int, max_len: int):
            self.lm = lm
            super().__init__(lm.fast_view(), n_rows, max_len)  # every anygen id feeds at most one embedding
            self.pending, self.h = None, None

        def _embed(self, ids):
            return self.pending

        def _head(self, h, lo, hi):
            self.h_new = h
            return None

        def _logits(self, lo, hi):
            rms = self._rms(self.h, *self.norm)
            return self.lm.logits_of(rms, lo, hi) if hi is None or hi > lo else None

        @torch.inference_mode()
        def prefill(self, ids, n_pad, lo=0, hi=None):
            rows = [ids[r, int(n_pad[r]):].tolist() for r in range(ids.shape[0])]
            embeds, _ = self.lm.embed_rows(rows, prompt=True)
            width = max(1, max(len(e) for e in embeds))
            x = torch.zeros(len(rows), width, embeds[0].shape[-1], dtype=self.dtype, device=self.device)
            for r, e in enumerate(embeds):
                x[r, width - len(e):] = e.to(self.dtype)
            self.pending = x
            pads = torch.tensor([width - len(e) for e in embeds], device=self.device)
            super().prefill(torch.zeros(len(rows), width, dtype=torch.long, device=self.device), pads, 0, 0)
            self.h = self.h_new
            return self._logits(lo, hi)

        @torch.inference_mode()
        def step(self, tokens, lo=0, hi=None, hold=None):
            x = self.lm.step_embeddings(tokens)
            if x is not None:  # every row feeds one embedding: one sub-step
                self.pending = x.to(self.dtype)
                super().step(tokens, 0, 0)
                self.h = self.h_new
                return self._logits(lo, hi)
            embeds, _ = self.lm.embed_rows([[t] for t in tokens.tolist()], prompt=False)
            R, lengths = len(embeds), [len(e) for e in embeds]
            k = max(lengths)
            dummy = torch.zeros(R, dtype=torch.long, device=self.device)
            for j in range(k):
                first = [k - n for n in lengths]  # right-aligned: row r feeds from sub-step first[r]
                x = torch.zeros(R, self.embed.shape[1], dtype=self.dtype, device=self.device)
                for r, e in enumerate(embeds):
                    if j >= first[r]:
                        x[r] = e[j - first[r]].to(self.dtype)
                held = torch.tensor([j < f for f in first], device=self.device)
                self.pending = x
                super().step(dummy, 0, 0, held if bool(held.any()) else None)
            if k:
                fed = torch.tensor([n > 0 for n in lengths], device=self.device)
                self.h = torch.where(fed[:, None], self.h_new, self.h)
            return self._logits(lo, hi)

    return JanusFastDecoder

