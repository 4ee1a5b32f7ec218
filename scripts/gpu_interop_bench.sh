#!/usr/bin/env bash
# `anygen bench interop` on a GPU at Emu3's released shapes with 2 layers (random weights, nothing
# downloaded): guided greedy image generation, anygen's batched guidance against transformers'
# generate, at batch 1 and 4, bfloat16. No test needs this script; run it wherever a GPU is:
#
#   scripts/gpu_interop_bench.sh                 # Emu3-Gen shapes, the 90 x 90 code grid (720 px)
#   GRID=32 REPEATS=1 scripts/gpu_interop_bench.sh   # a quicker look (1024 codes per image)
#   FAMILY=janus scripts/gpu_interop_bench.sh    # Janus-Pro-7B shapes, 24 x 24 codes (384 px)
#
# Shapes (Emu3-Gen-hf config.json): hidden 4096 in 32 heads of 128, 8 key/value heads, MLP 14336,
# 184622 ids, 32768 codes; Janus-Pro-7B: hidden 4096 in 32 heads, 32 key/value heads, MLP 11008,
# 16384 codes (the random Janus keeps its small test tokenizer's ids: VOCAB applies to Emu3 only).
# Any of them can be changed through the variables below.
# Results go to $OUT (default gpu_interop_bench.json) as well as to the terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
FAMILY=${FAMILY:-emu3}
LAYERS=${LAYERS:-2}
HIDDEN=${HIDDEN:-4096}
HEADS=${HEADS:-32}
if [ "$FAMILY" = janus ]; then
  KV_HEADS=${KV_HEADS:-32}
  INTERMEDIATE=${INTERMEDIATE:-11008}
  CODEBOOK=${CODEBOOK:-16384}
  GRID=${GRID:-24}
  VOCAB_ARGS=()  # Janus's random model keeps its language model's ids
else
  KV_HEADS=${KV_HEADS:-8}
  INTERMEDIATE=${INTERMEDIATE:-14336}
  CODEBOOK=${CODEBOOK:-32768}
  GRID=${GRID:-90}
  VOCAB_ARGS=(--vocab-size "${VOCAB:-184622}")
fi
REPEATS=${REPEATS:-1}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu_interop_bench.json}
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or '$DEVICE' == 'cpu' else 'no CUDA device: set DEVICE=cpu to run on the CPU')"
"$PYTHON" -m anygen bench interop --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --kv-heads "$KV_HEADS" \
  --intermediate "$INTERMEDIATE" "${VOCAB_ARGS[@]}" --family "$FAMILY" --codebook "$CODEBOOK" --grid "$GRID" \
  --batch 1 4 --repeats "$REPEATS" --device "$DEVICE" --threads "$(nproc)" --json "$OUT"
