# Sourced by the training/*.sh recipes (set RECIPE first): `stamp MSG` prints the minutes since the
# recipe began; `step LAST CMD...` runs CMD unless LAST, the step's last output, already exists, so
# rerunning a recipe resumes it. `codec NAME [overrides...]` trains tokenizers/NAME.yaml into
# $RUNS/tokenizers/NAME on one thread (resuming; $CODEC_ARGS adds overrides), logging to
# $RUNS/logs/tokenizer_NAME.log, and stops the recipe naming that log if it fails.
start=$(date +%s)
stamp() { echo "[$RECIPE] $(( ($(date +%s) - start) / 60 )) min: $*"; }
step() { local last=$1; shift; if [[ -e $last ]]; then echo "[$RECIPE] kept $last"; else "$@"; fi; }
codec() {
  local name=$1 log="$RUNS/logs/tokenizer_$1.log"; shift
  # shellcheck disable=SC2086  # CODEC_ARGS is a word list
  ANYGEN_THREADS=1 $ANYGEN tokenizer train "tokenizers/$name.yaml" out="$RUNS/tokenizers/$name" "$@" ${CODEC_ARGS:-} \
      --resume >> "$log" 2>&1 || { echo "codec $name failed: $log" >&2; exit 1; }
}
