#!/usr/bin/env bash
# Melodies heard in many timbres, on top of the bundled default model, in one resumable command: token
# shards whose audio->text examples play training-split timbres (anygen/worlds/shapes/timbres.py) -> the
# default decoder fine-tuned on them (phase 3's mix, audio tasks weighted up) -> bundle. The held-out
# waveforms never train; `anygen eval shapes --model $BUNDLE --only t2a,a2t` reports a2t in the reference,
# the training and the held-out timbres.
#   RUNS     intermediate artifacts (default: runs/timbres); BUNDLE the model (default: $RUNS/model)
#   AUDIO    default: keep the default model's audio codec (text->audio is unchanged); retrain: retrain it
#            on augmented melodies first (tokenizers/melody_audio.yaml, data.melody_timbres=augmented)
#   STEPS    decoder fine-tuning steps (default 2000); N_TRAIN examples in the shards (default 30000)
#   CODEC_ARGS / TRAIN_ARGS  extra overrides of the codec / decoder run, e.g. "train.steps=5" for a smoke run
#   DEFAULT  the model to start from (default: anygen/assets/default); ANYGEN the anygen command
set -euo pipefail
RUNS=${RUNS:-runs/timbres}
BUNDLE=${BUNDLE:-$RUNS/model}
AUDIO=${AUDIO:-default}
[[ $AUDIO == default || $AUDIO == retrain ]] || { echo "AUDIO must be default or retrain, got $AUDIO" >&2; exit 2; }
STEPS=${STEPS:-2000}
N_TRAIN=${N_TRAIN:-30000}
ANYGEN=${ANYGEN:-anygen}
DEFAULT=${DEFAULT:-anygen/assets/default}  # run from the repository root
export ANYGEN_THREADS=${ANYGEN_THREADS:-1}
mkdir -p "$RUNS/logs"
RECIPE=melody-timbres
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # stamp, step
MIX="tasks.text_to_image.weight=1.5 tasks.image_to_text.weight=1 tasks.text_to_audio.weight=3
  tasks.audio_to_text.weight=4 tasks.edit.weight=2 tasks.describe_edit.weight=3 tasks.reasoned_edit.weight=8
  tasks.reasoned_text.weight=6 tasks.story.weight=3 world.lookalike_prob=0.5 world.edit_weights.move=2"

TOKENIZER=$DEFAULT/tokenizer
if [[ $AUDIO == retrain ]]; then
  stamp "audio codec on augmented melodies (log: $RUNS/logs/codec.log)"
  # shellcheck disable=SC2086  # CODEC_ARGS is a word list
  step "$RUNS/tokenizers/melody_audio/summary.json" $ANYGEN tokenizer train tokenizers/melody_audio.yaml \
      out="$RUNS/tokenizers/melody_audio" data.melody_timbres=augmented ${CODEC_ARGS:-} --resume >> "$RUNS/logs/codec.log" 2>&1
  step "$RUNS/tokenizer/tokenizer.json" $ANYGEN tokenizer assemble --text "$DEFAULT/tokenizer/text" \
      --image "$DEFAULT/tokenizer/image" --audio "$RUNS/tokenizers/melody_audio" --image-keep --out "$RUNS/tokenizer"
  TOKENIZER=$RUNS/tokenizer
fi
stamp "token shards"
# shellcheck disable=SC2086  # MIX and TRAIN_ARGS are word lists
step "$RUNS/shards/val/index.json" $ANYGEN pretokenize training/shapes_data.yaml tokenizer="$TOKENIZER" \
    out="$RUNS/shards" n_train="$N_TRAIN" n_val=200 world.seed=17 world.melody_timbres=augmented $MIX
stamp "decoder, fine-tuned from $DEFAULT"
step "$RUNS/decoder/model" $ANYGEN train training/shapes.yaml train.out_dir="$RUNS/decoder" \
    data.shard_dir="$RUNS/shards/train" data.eval_shard_dir="$RUNS/shards/val" train.steps="$STEPS" \
    optim.lr=3e-4 optim.warmup_steps=20 train.seed=3 train.init_weights="$DEFAULT" ${TRAIN_ARGS:-} --resume
step "$BUNDLE/config.json" $ANYGEN bundle "$RUNS/decoder/model" --out "$BUNDLE"
stamp "done: $BUNDLE (anygen eval shapes --model $BUNDLE --only t2a,a2t)"
