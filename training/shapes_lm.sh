#!/usr/bin/env bash
# The pretrained-initialised ShapesWorld model in one command (`make shapes-lm`): import SmolLM2 from
# its GGUF -> the multimodal tokenizer on its BPE (with the bundled model's image codec) -> paraphrase
# shards -> train (training/shapes_lm.yaml) -> bundle. SCRATCH=1 trains the from-scratch counterpart
# (training/shapes_lm_scratch.yaml) on the same shards instead.
#   RUNS     intermediate artifacts                         (default: runs)
#   BUNDLE   the bundled model                              (default: $RUNS/shapes_lm, or $RUNS/shapes_lm_scratch)
#   N_TRAIN  training examples in the shards                (default: the recipe's 40000)
#   TRAIN_ARGS  extra `anygen train` overrides, e.g. "train.steps=20 train.time_budget_minutes=3" for a smoke run
# Rerunning resumes: a step whose last output exists is kept; an interrupted training run continues
# from its last checkpoint.
set -euo pipefail
RUNS=${RUNS:-runs}
SCRATCH=${SCRATCH:-0}
NAME=$([[ $SCRATCH == 1 ]] && echo shapes_lm_scratch || echo shapes_lm)
BUNDLE=${BUNDLE:-$RUNS/$NAME}
ANYGEN=${ANYGEN:-anygen}
CODECS=${CODECS:-anygen/assets/default/tokenizer}  # the bundled model's image codec (8x8 codes of 64 px scenes)
RECIPE=shapes-lm
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"  # stamp, step

stamp "import SmolLM2 (GGUF -> transformers)"
step "$RUNS/smollm2/anygen_import.json" $ANYGEN import-lm smollm2 --out "$RUNS/smollm2"
stamp "tokenizer: SmolLM2's BPE + image codes"
step "$RUNS/smol_tok/tokenizer.json" $ANYGEN tokenizer assemble --text "$RUNS/smollm2" --image "$CODECS/image" \
    --out "$RUNS/smol_tok"
stamp "paraphrase shards"
step "$RUNS/shards/shapes_lm/val/index.json" env ANYGEN_THREADS=1 $ANYGEN pretokenize training/shapes_lm_data.yaml \
    tokenizer="$RUNS/smol_tok" out="$RUNS/shards/shapes_lm" ${N_TRAIN:+n_train=$N_TRAIN}
stamp "train ($NAME)"
if [[ $SCRATCH == 1 ]]; then
  # shellcheck disable=SC2086  # TRAIN_ARGS is a word list
  step "$RUNS/decoder/$NAME/model" $ANYGEN train training/shapes_lm_scratch.yaml train.out_dir="$RUNS/decoder/$NAME" \
      data.shard_dir="$RUNS/shards/shapes_lm/train" data.eval_shard_dir="$RUNS/shards/shapes_lm/val" \
      ${TRAIN_ARGS:-} --resume
else
  # shellcheck disable=SC2086
  step "$RUNS/decoder/$NAME/model" $ANYGEN train training/shapes_lm.yaml train.out_dir="$RUNS/decoder/$NAME" \
      train.init_from="$RUNS/smollm2" data.shard_dir="$RUNS/shards/shapes_lm/train" \
      data.eval_shard_dir="$RUNS/shards/shapes_lm/val" ${TRAIN_ARGS:-} --resume
fi
step "$BUNDLE/config.json" $ANYGEN bundle "$RUNS/decoder/$NAME/model" --out "$BUNDLE"
stamp "done: $BUNDLE (anygen eval shapes --model $BUNDLE --only t2i,edit --phrasing heldout; anygen eval english --model $BUNDLE)"
