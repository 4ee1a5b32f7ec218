#!/usr/bin/env bash
# The emoji model in one command (`make emoji-model`): image codec (tokenizers/emoji_image.yaml, 64 px ->
# 16x16 FSQ codes) and text tokenizer (tokenizers/emoji_text.yaml) -> the multimodal tokenizer (with <keep>)
# -> token shards (training/emoji_data.yaml) -> decoder (training/emoji.yaml, ends by its wall-time budget)
# -> bundle. Every step reads only the emoji world's training split (anygen/worlds/emoji: the held-out
# bases' variants never appear), so `anygen eval emoji --model $BUNDLE` measures edits never trained on.
#   RUNS        intermediate artifacts                        (default: runs)
#   BUNDLE      the bundled model                             (default: $RUNS/emoji_model)
#   N_TRAIN / N_VAL  examples in the shards                   (default: the recipe's 60000 / 400)
#   CODEC_ARGS  extra `anygen tokenizer train` overrides of the image codec, e.g. "train.steps=20"
#   TRAIN_ARGS  extra `anygen train` overrides, e.g. "train.steps=20 train.time_budget_minutes=3" for a smoke run
# Rerunning resumes: a step whose last output exists is kept; an interrupted codec or decoder run
# continues from its last checkpoint. Logs of the codec go to $RUNS/logs/.
set -euo pipefail
RUNS=${RUNS:-runs}
BUNDLE=${BUNDLE:-$RUNS/emoji_model}
ANYGEN=${ANYGEN:-anygen}
mkdir -p "$RUNS/logs"
RECIPE=emoji-model
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # stamp, step, codec

stamp "image codec (log: $RUNS/logs/tokenizer_emoji_image.log)"
step "$RUNS/tokenizers/emoji_image/summary.json" codec emoji_image
stamp "text tokenizer"
step "$RUNS/tokenizers/emoji_text/summary.json" env ANYGEN_THREADS=1 $ANYGEN tokenizer train tokenizers/emoji_text.yaml \
    out="$RUNS/tokenizers/emoji_text"
step "$RUNS/emoji_tokenizer/tokenizer.json" $ANYGEN tokenizer assemble --text "$RUNS/tokenizers/emoji_text" \
    --image "$RUNS/tokenizers/emoji_image" --image-keep --out "$RUNS/emoji_tokenizer"
stamp "token shards"
step "$RUNS/shards/emoji/val/index.json" env ANYGEN_THREADS=1 $ANYGEN pretokenize training/emoji_data.yaml \
    tokenizer="$RUNS/emoji_tokenizer" out="$RUNS/shards/emoji" ${N_TRAIN:+n_train=$N_TRAIN} ${N_VAL:+n_val=$N_VAL}
stamp "decoder"
# shellcheck disable=SC2086  # TRAIN_ARGS is a word list
step "$RUNS/decoder/emoji/model" $ANYGEN train training/emoji.yaml train.out_dir="$RUNS/decoder/emoji" \
    data.shard_dir="$RUNS/shards/emoji/train" data.eval_shard_dir="$RUNS/shards/emoji/val" ${TRAIN_ARGS:-} --resume
step "$BUNDLE/config.json" $ANYGEN bundle "$RUNS/decoder/emoji/model" --out "$BUNDLE"
stamp "done: $BUNDLE (anygen eval emoji --model $BUNDLE)"
