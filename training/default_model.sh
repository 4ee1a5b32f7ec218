#!/usr/bin/env bash
# Train the default any-to-any ShapesWorld model from scratch, timed: tokenizers -> <keep> tokenizer
# -> token shards -> decoder (three phases) -> bundle. `make default-model` runs this (README "Default model").
#   RUNS    where the intermediate artifacts go           (default: runs)
#   BUNDLE  where the bundled model is written             (default: runs/default_model; set
#           BUNDLE=anygen/assets/default to replace the shipped model)
# Rerunning resumes: a step whose last output exists is kept, and an interrupted training run
# continues from its last checkpoint.
# Decoder phases: (1) everything, 12,000 steps; (2) the reasoned edit's plan in words alone
# (reasoned_text, short text-only examples: many plans per step); (3) back on everything, weighted to
# reasoned edits, so that the plan learned in words carries over to drawing the edit. Phases 2 and 3 see
# half their edits (and story openings) with a same-colour look-alike of the edited object
# (world.lookalike_prob=0.5): telling those apart is what the plans got wrong without it; and twice as
# many moves as each other edit kind (world.edit_weights.move=2), the kind furthest from its target.
# Measured on the 2-core CPU (2 h 49 min in all): codecs side by side (one thread each) 11.5 min, shards 3 min, phase 1
# 109 min on both threads (1.84 steps/s), phase 2 16.4 min, phase 3 28.6 min (README "The default model from scratch").
set -euo pipefail
RUNS=${RUNS:-runs}
BUNDLE=${BUNDLE:-$RUNS/default_model}
ANYGEN=${ANYGEN:-anygen}
mkdir -p "$RUNS/logs"
RECIPE=default-model
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # stamp, step, codec
# Every shard set is the same recipe with other sizes, seeds and task weights.
PLANS_MIX="tasks.text_to_image.weight=0 tasks.image_to_text.weight=0 tasks.text_to_audio.weight=0
  tasks.audio_to_text.weight=0 tasks.edit.weight=0 tasks.describe_edit.weight=0 tasks.reasoned_edit.weight=0
  tasks.reasoned_text.weight=1 tasks.story.weight=0 world.melody_prob=0 world.lookalike_prob=0.5 world.edit_weights.move=2"
REASONED_MIX="tasks.text_to_image.weight=1.5 tasks.image_to_text.weight=1 tasks.text_to_audio.weight=0.75
  tasks.audio_to_text.weight=0.5 tasks.edit.weight=2 tasks.describe_edit.weight=3 tasks.reasoned_edit.weight=8
  tasks.reasoned_text.weight=6 tasks.story.weight=3 world.lookalike_prob=0.5 world.edit_weights.move=2"
# await PID WHAT LOG: wait for a step run in the background; stop the script if it failed
await() { wait "$1" || { echo "$2 failed: $3" >&2; exit 1; }; }
shards() {  # shards NAME [overrides...]
  local name=$1; shift
  step "$RUNS/shards/$name/val/index.json" env ANYGEN_THREADS=1 $ANYGEN pretokenize training/shapes_data.yaml \
      tokenizer="$RUNS/tokenizer" out="$RUNS/shards/$name" "$@"
}
decoder() {  # decoder NAME SHARDS [overrides...]
  local name=$1 data=$2; shift 2
  step "$RUNS/decoder/$name/model" $ANYGEN train training/shapes.yaml train.out_dir="$RUNS/decoder/$name" \
      data.shard_dir="$RUNS/shards/$data/train" data.eval_shard_dir="$RUNS/shards/$data/val" "$@" --resume
}

stamp "tokenizers (text; image and audio codecs side by side)"
step "$RUNS/tokenizers/text/summary.json" env ANYGEN_THREADS=1 $ANYGEN tokenizer train tokenizers/text.yaml \
    out="$RUNS/tokenizers/text"
step "$RUNS/tokenizers/shapes_image/summary.json" codec shapes_image &
image=$!
step "$RUNS/tokenizers/melody_audio/summary.json" codec melody_audio &
audio=$!
await $image "image codec" "$RUNS/logs/tokenizer_shapes_image.log"
await $audio "audio codec" "$RUNS/logs/tokenizer_melody_audio.log"
step "$RUNS/tokenizer/tokenizer.json" $ANYGEN tokenizer assemble --text "$RUNS/tokenizers/text" \
    --image "$RUNS/tokenizers/shapes_image" --audio "$RUNS/tokenizers/melody_audio" --image-keep --out "$RUNS/tokenizer"

stamp "token shards (the later phases' side by side)"
# shellcheck disable=SC2086  # the mixes are word lists
{ shards plans n_train=40000 n_val=200 world.seed=13 $PLANS_MIX
  shards reasoned n_train=40000 n_val=200 world.seed=11 $REASONED_MIX; } >> "$RUNS/logs/shards_later.log" 2>&1 &
later=$!
shards shapes
await $later "token shards" "$RUNS/logs/shards_later.log"

stamp "decoder, phase 1: everything"
decoder shapes shapes
stamp "decoder, phase 2: the edit's plan in words"
decoder plans plans train.steps=2000 optim.lr=5e-4 optim.warmup_steps=20 train.seed=1 \
    train.init_weights="$RUNS/decoder/shapes/model"
stamp "decoder, phase 3: everything, weighted to reasoned edits"
decoder reasoned reasoned train.steps=3600 optim.lr=3e-4 optim.warmup_steps=20 train.seed=2 \
    train.init_weights="$RUNS/decoder/plans/model"

$ANYGEN bundle "$RUNS/decoder/reasoned/model" --out "$BUNDLE"
stamp "done: $BUNDLE"
