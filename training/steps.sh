# Sourced by the training/*.sh recipes (set RECIPE first): `stamp MSG` prints the minutes since the
# recipe began; `step LAST CMD...` runs CMD unless LAST, the step's last output, already exists, so
# rerunning a recipe resumes it.
start=$(date +%s)
stamp() { echo "[$RECIPE] $(( ($(date +%s) - start) / 60 )) min: $*"; }
step() { local last=$1; shift; if [[ -e $last ]]; then echo "[$RECIPE] kept $last"; else "$@"; fi; }
