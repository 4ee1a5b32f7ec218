#!/usr/bin/env bash
# The speech model in one command (`make speech-model`): speech codec (tokenizers/speech_audio.yaml, 25
# frames/s x 4 levels) and a text tokenizer on the speech world's sentences -> the multimodal tokenizer ->
# token shards (training/speech_data.yaml) -> decoder (training/speech.yaml, ends by its wall-time budget)
# -> bundle. Every step reads only the speech world's training split, so `anygen eval speech --model
# $BUNDLE` says held-out sentences and hears the held-out voice.
#   RUNS        intermediate artifacts                        (default: runs)
#   BUNDLE      the bundled model                             (default: $RUNS/speech_model)
#   N_TRAIN / N_VAL  examples in the shards                   (default: the recipe's 30000 / 300)
#   CODEC_ARGS  extra `anygen tokenizer train` overrides of the speech codec, e.g. "train.steps=20"
#   TRAIN_ARGS  extra `anygen train` overrides, e.g. "train.steps=20 train.time_budget_minutes=3" for a smoke run
# Rerunning resumes: a step whose last output exists is kept; an interrupted codec or decoder run
# continues from its last checkpoint. Logs of the codec go to $RUNS/logs/.
set -euo pipefail
RUNS=${RUNS:-runs}
BUNDLE=${BUNDLE:-$RUNS/speech_model}
ANYGEN=${ANYGEN:-anygen}
mkdir -p "$RUNS/logs"
RECIPE=speech-model
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # stamp, step, codec

stamp "speech codec (log: $RUNS/logs/tokenizer_speech_audio.log)"
step "$RUNS/tokenizers/speech_audio/summary.json" codec speech_audio
stamp "text tokenizer"
step "$RUNS/tokenizers/speech_text/summary.json" env ANYGEN_THREADS=1 $ANYGEN tokenizer train tokenizers/text.yaml \
    out="$RUNS/tokenizers/speech_text" data.source=speech
step "$RUNS/speech_tokenizer/tokenizer.json" $ANYGEN tokenizer assemble --text "$RUNS/tokenizers/speech_text" \
    --audio "$RUNS/tokenizers/speech_audio" --out "$RUNS/speech_tokenizer"
stamp "token shards"
step "$RUNS/shards/speech/val/index.json" env ANYGEN_THREADS=1 $ANYGEN pretokenize training/speech_data.yaml \
    tokenizer="$RUNS/speech_tokenizer" out="$RUNS/shards/speech" ${N_TRAIN:+n_train=$N_TRAIN} ${N_VAL:+n_val=$N_VAL}
stamp "decoder"
# shellcheck disable=SC2086  # TRAIN_ARGS is a word list
step "$RUNS/decoder/speech/model" $ANYGEN train training/speech.yaml train.out_dir="$RUNS/decoder/speech" \
    data.shard_dir="$RUNS/shards/speech/train" data.eval_shard_dir="$RUNS/shards/speech/val" ${TRAIN_ARGS:-} --resume
step "$BUNDLE/config.json" $ANYGEN bundle "$RUNS/decoder/speech/model" --out "$BUNDLE"
# `say` writes up to 9.6 s (240 frames at 25 frames/s): the longest sentences last 7.8 s in its voice
$ANYGEN recommend "$BUNDLE" audio_max_frames=240 > /dev/null
stamp "done: $BUNDLE (anygen eval speech --model $BUNDLE)"
