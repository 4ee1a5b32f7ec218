#!/usr/bin/env bash
# Train the default any-to-any ShapesWorld model from scratch, timed: tokenizers -> <keep> tokenizer
# -> token shards -> decoder -> bundle. `make default-model` runs this (README "Default model").
#   RUNS    where the intermediate artifacts go           (default: runs)
#   BUNDLE  where the bundled model is written             (default: runs/default_model; set
#           BUNDLE=anygen/assets/default to replace the shipped model)
# Measured on the 2-core CPU (2 h 03 min in all): the codecs train side by side (one thread each,
# 11.5 min), shards take 3 min on one thread, the decoder uses both threads (1.84 steps/s, 109 min).
set -euo pipefail
RUNS=${RUNS:-runs}
BUNDLE=${BUNDLE:-$RUNS/default_model}
ANYGEN=${ANYGEN:-anygen}
mkdir -p "$RUNS/logs"
start=$(date +%s)
stamp() { echo "[default-model] $(( ($(date +%s) - start) / 60 )) min: $*"; }

stamp "tokenizers (text; image and audio codecs side by side)"
ANYGEN_THREADS=1 $ANYGEN tokenizer train tokenizers/text.yaml out="$RUNS/tokenizers/text"
ANYGEN_THREADS=1 $ANYGEN tokenizer train tokenizers/shapes_image.yaml out="$RUNS/tokenizers/shapes_image" \
    > "$RUNS/logs/tokenizer_image.log" 2>&1 &
image=$!
ANYGEN_THREADS=1 $ANYGEN tokenizer train tokenizers/melody_audio.yaml out="$RUNS/tokenizers/melody_audio" \
    > "$RUNS/logs/tokenizer_audio.log" 2>&1 &
audio=$!
wait $image || { echo "image codec failed: $RUNS/logs/tokenizer_image.log" >&2; exit 1; }
wait $audio || { echo "audio codec failed: $RUNS/logs/tokenizer_audio.log" >&2; exit 1; }
$ANYGEN tokenizer assemble --text "$RUNS/tokenizers/text" --image "$RUNS/tokenizers/shapes_image" \
    --audio "$RUNS/tokenizers/melody_audio" --image-keep --out "$RUNS/tokenizer"

stamp "token shards"
ANYGEN_THREADS=1 $ANYGEN pretokenize training/shapes_data.yaml tokenizer="$RUNS/tokenizer" out="$RUNS/shards/shapes"

stamp "decoder"
$ANYGEN train training/shapes.yaml train.out_dir="$RUNS/decoder/shapes" \
    data.shard_dir="$RUNS/shards/shapes/train" data.eval_shard_dir="$RUNS/shards/shapes/val"

$ANYGEN bundle "$RUNS/decoder/shapes/model" --out "$BUNDLE"
stamp "done: $BUNDLE"
