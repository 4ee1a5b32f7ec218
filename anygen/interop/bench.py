"""`anygen bench interop`: guided image generation on a released model, anygen against transformers.

The same weights (a random Emu3 or Janus of `layers` x `hidden` written to a temporary directory,
or a given directory of either) draw one greedy image per prompt with classifier-free guidance, at
each batch size: anygen's sampler (guidance rows batched beside their prompts, one forward per
step) against transformers' `generate`. Emu3: its `guidance_scale` + `negative_prompt_ids` path,
which runs the unconditional prompt as a second forward per step, under Emu3's documented prefix
constraint. Janus: `generate(generation_mode="image")`, its own loop (it batches the guidance rows
itself; the difference is the loop). Both produce the same tokens (checked and reported); each
time is the median of `repeats` runs, the two interleaved so that load from other processes hits
them alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from anygen.errors import AnygenError
from anygen.interop import adapter_of
from anygen.interop import load as load_interop
from anygen.interop.base import RowExpander
from anygen.sampling.engine import Prompt, generate
from anygen.sampling.settings import GenerationConfig, SamplingSettings
from anygen.tasks import layouts
from anygen.threads import set_threads

# the goals at batch 1 on a CPU: Emu3 (batched against unbatched guidance), Janus (its own loop)
GOAL_SPEEDUP = {"emu3": 1.7, "janus": 1.2}
FAMILIES = ("emu3", "janus")
PROMPTS = ("a red circle above a blue square", "two green triangles", "a small yellow star on the left",
           "a purple square and an orange circle")


def emu3_prefix_allowed_tokens(config, height: int, width: int):
    """transformers' documented `prefix_allowed_tokens_fn` for Emu3 image generation."""
    vm = config.vocabulary_map
    visual = sorted(v for k, v in vm.items() if k.startswith("<|visual token"))
    wrapper, eol, eof, eoi = vm["<|image token|>"], vm["<|extra_200|>"], vm["<|extra_201|>"], vm["<|image end|>"]
    eos, pad = config.text_config.eos_token_id, config.text_config.pad_token_id

    def allowed(batch_id, input_ids):
        offset = input_ids.shape[0] - torch.nonzero(input_ids == wrapper, as_tuple=True)[0][0]
        if offset % (width + 1) == 0:
            return (eol,)
        for k, token in enumerate((eof, eoi, eos), start=1):
            if offset == (width + 1) * height + k:
                return (token,)
        return (pad,) if offset > (width + 1) * height + 3 else visual

    return allowed


def _expand(idmap, ids) -> list[int]:
    row = RowExpander(idmap)
    return [m for t in ids for m in row.feed(int(t))]


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def run_interop_bench(directory: str | None = None, layers: int = 4, hidden: int = 256, grid: int = 8,
                      codebook: int = 1024, batches=(1, 4), guidance_scale: float = 3.0, repeats: int = 3,
                      threads: int = 1, device: str = "cpu", heads: int | None = None, kv_heads: int | None = None,
                      intermediate: int | None = None, vocab_size: int | None = None, family: str = "emu3") -> dict:
    """Seconds per call of anygen's sampler and transformers' generate for each batch size (see the module doc).

    The random model has `heads` attention heads (default: heads of 64), `kv_heads` key/value heads
    (default: as many as heads), MLP
    width `intermediate` (default 2 * hidden) and `vocab_size` ids (default: just its tokens; Emu3
    only); on a CUDA `device` both run in bfloat16 and every timing waits for the GPU. `family`
    (emu3, janus) picks the random model; a given directory is read by its config."""
    if family not in FAMILIES:
        raise AnygenError(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}")

    for name, value, least in (("--layers", layers, 1), ("--hidden", hidden, 64), ("--grid", grid, 1),
                               ("--codebook", codebook, 2), ("--repeats", repeats, 1)):
        if value < least:
            raise AnygenError(f"{name} must be at least {least}, got {value}")
    if heads is None and hidden % 64:
        raise AnygenError(f"--hidden must be a multiple of 64 (heads of 64), got {hidden}")
    heads = hidden // 64 if heads is None else heads
    if heads < 1 or hidden % heads:
        raise AnygenError(f"--heads must divide --hidden ({hidden}), got {heads}")
    kv_heads = heads if kv_heads is None else kv_heads
    if kv_heads < 1 or heads % kv_heads:
        raise AnygenError(f"--kv-heads must divide the {heads} heads, got {kv_heads}")
    cuda = str(device).startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise AnygenError(f"--device {device}: no CUDA device here")
    if not batches or min(batches) < 1:
        raise AnygenError(f"--batch sizes must be at least 1, got {list(batches)}")
    set_threads(threads, "--threads")
    given = directory
    with tempfile.TemporaryDirectory() as tmp:
        if directory is None:
            from anygen.interop import tiny

            if family == "emu3":
                directory = tiny.write_tiny_emu3(Path(tmp) / "emu3", layers=layers, hidden=hidden, heads=heads,
                                                 kv_heads=kv_heads, codebook=codebook, grid=grid,
                                                 context=max(2048, (grid + 1) * grid + 512),
                                                 intermediate=intermediate, vocab_size=vocab_size)
            else:
                directory = tiny.write_tiny_janus(Path(tmp) / "janus", layers=layers, hidden=hidden, heads=heads,
                                                  kv_heads=kv_heads, codebook=codebook, grid=grid,
                                                  context=max(2048, grid * grid + 512), intermediate=intermediate)
        else:
            module = adapter_of(directory)
            if module not in ("anygen.interop.emu3", "anygen.interop.janus"):
                raise AnygenError(f"{directory}: bench interop needs an Emu3 or Janus directory "
                                  "(config.json model_type emu3 or janus)")
            family = module.rsplit(".", 1)[1]
        lm, tokenizer, _ = load_interop(directory, device)
        if family == "emu3":
            from transformers import Emu3ForConditionalGeneration as cls
        else:
            from transformers import JanusForConditionalGeneration as cls
        hf = cls.from_pretrained(str(directory), dtype=torch.bfloat16 if cuda else torch.float32).eval().to(device)
    vocab, idmap = tokenizer.vocab, lm.idmap
    (h, w), = vocab.image_grids
    text_cfg = hf.config.text_config
    cfg = GenerationConfig(max_new_tokens=h * w + 4, guidance_scales=(guidance_scale,), allow_audio=False,
                           image=SamplingSettings(greedy=True), text=SamplingSettings(greedy=True))
    image_prefix = [vocab.boi, vocab.grid_id((h, w))] if family == "emu3" else [vocab.boi]
    null = layouts.null_condition_prompt(tokenizer, "text_to_image")
    out = {"family": family,
           "model": {"layers": text_cfg.num_hidden_layers, "hidden": text_cfg.hidden_size, "grid": [h, w],
                     "codebook": vocab.image_codebook_size, "params": sum(p.numel() for p in hf.parameters()),
                     "vocab": text_cfg.vocab_size, "directory": None if given is None else str(given)},
           "device": str(device), "threads": threads, "repeats": repeats, "guidance_scale": guidance_scale,
           "goal_speedup": GOAL_SPEEDUP[family], "batches": []}
    for batch in batches:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        conds = [layouts.task_prompt(tokenizer, "text_to_image", text=t) for t in texts]
        unconds = [lm.guidance_prompt(c) if family == "janus" else null for c in conds]
        prompts = [Prompt(c, uncond=[u], force=[vocab.boi]) for c, u in zip(conds, unconds)]
        ids, mask = _left_pad([_expand(idmap, c + image_prefix) for c in conds], idmap.pad)
        ids, mask = ids.to(device), mask.to(device)
        if family == "emu3":
            neg = torch.tensor([_expand(idmap, null + image_prefix)] * batch, device=device)
            n_new = (w + 1) * h + 2  # codes with their row ends, end of frame, end of image
            options = dict(max_new_tokens=n_new, prefix_allowed_tokens_fn=emu3_prefix_allowed_tokens(hf.config, h, w),
                           guidance_scale=guidance_scale, negative_prompt_ids=neg, pad_token_id=idmap.pad)
        else:
            options = dict(generation_mode="image", guidance_scale=guidance_scale)

        def ours():
            return generate(lm, vocab, prompts, cfg)

        def theirs():
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, do_sample=False, **options)

        times = {"anygen": [], "transformers": []}
        results = {}
        for _ in range(repeats):
            for name, fn in (("anygen", ours), ("transformers", theirs)):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                results[name] = fn()
                if cuda:
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
        if family == "emu3":
            same = all(_same_tokens(idmap, vocab, c, r, row, ids.shape[1], image_prefix)
                       for c, r, row in zip(conds, results["anygen"], results["transformers"]))
        else:  # transformers returns the codes alone
            same = all(r.ids[2:2 + h * w] == [vocab.image_start + int(c) for c in row.cpu()]
                       for r, row in zip(results["anygen"], results["transformers"]))
        a, t = statistics.median(times["anygen"]), statistics.median(times["transformers"])
        out["batches"].append({"batch": batch, "anygen_s": a, "transformers_s": t, "speedup": t / a,
                               "images_per_s": batch / a, "same_tokens": same})
    return out


def _same_tokens(idmap, vocab, cond, result, hf_row, prompt_width, image_prefix) -> bool:
    """Whether anygen's image (in model ids, through <|image end|>) is what transformers generated."""
    if vocab.eoi not in result.ids:
        return False
    full = _expand(idmap, cond + result.ids[:result.ids.index(vocab.eoi) + 1])
    prompt = _expand(idmap, cond + image_prefix)
    generated = hf_row.cpu().tolist()[prompt_width:]
    return full[len(prompt):] == generated[:len(full) - len(prompt)]


def format_interop_bench(r: dict) -> str:
    m = r["model"]
    lines = [f"{r['family'].capitalize()} {m['layers']} layers x {m['hidden']}, {m['params'] / 1e6:.1f}M params, {m['grid'][0]}x{m['grid'][1]} "
             f"codes of {m['codebook']}; guidance scale {r['guidance_scale']}; {r['device']}, threads {r['threads']}; "
             f"medians of {r['repeats']}"]
    for b in r["batches"]:
        lines.append(f"batch {b['batch']}: anygen {b['anygen_s'] * 1e3:.0f} ms vs transformers generate "
                     f"{b['transformers_s'] * 1e3:.0f} ms -> {b['speedup']:.2f}x (goal >= {r['goal_speedup']}x); "
                     f"same tokens: {'yes' if b['same_tokens'] else 'NO'}")
    return "\n".join(lines)
