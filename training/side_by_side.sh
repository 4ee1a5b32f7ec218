#!/usr/bin/env bash
# The discrete-vs-Transfusion side-by-side at equal compute, one training seed per call (docs/experiments.md
# "Discrete tokens vs Transfusion at equal compute"). `make side-by-side SEED=S` runs this.
#   side_by_side.sh SEED     train training/t2i_tokens.yaml and training/t2i_diffusion.yaml with train.seed=SEED
#                            (same decoder, same data stream, same steps), then judge both with `anygen eval shapes`
#   side_by_side.sh summary  mean and spread (min..max) over the seeds evaluated so far, one line per head
# Both recipes use the bundled model's tokenizer (`data.tokenizer: default`), so this runs in a fresh clone.
#   RUNS   where the runs go (default: runs/side_by_side; seed S in $RUNS/seedS/{tokens,diffusion})
#   STEPS  training steps per model (default: the recipes' 1,000); N: eval samples (default 200)
#   TASKS  eval tasks (default t2i: the recipes train text->image only)
# Rerunning a seed keeps a finished model and its eval; an interrupted training run resumes.
set -euo pipefail
RUNS=${RUNS:-runs/side_by_side}
STEPS=${STEPS:-1000}
N=${N:-200}
TASKS=${TASKS:-t2i}
ANYGEN=${ANYGEN:-anygen}
PYTHON=${PYTHON:-python3}
export ANYGEN_THREADS=${ANYGEN_THREADS:-1}

if [[ ${1:-} == summary ]]; then
  exec "$PYTHON" - "$RUNS" <<'PY'
import json, re, statistics, sys
from pathlib import Path
runs = Path(sys.argv[1])
shown = re.compile(r"all_correct|objects_2\.|exact|success|preservation|coherence|validity|fd_pool8|seconds_per")
for head in ("tokens", "diffusion"):
    evals = sorted(runs.glob(f"seed*/{head}/eval.json"))
    if not evals:
        continue
    rows = [json.loads(p.read_text()) for p in evals]
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float)) and all(k in r for r in rows)
            and shown.search(k)]
    train = [json.loads((p.parent / "summary.json").read_text()) for p in evals]
    print(f"{head}: {len(rows)} seeds ({', '.join(p.parent.parent.name for p in evals)}), "
          f"train CPU {statistics.mean(t['cpu_s'] for t in train) / 60:.1f} min mean")
    for k in keys:
        xs = [float(r[k]) for r in rows]
        print(f"  {k}: {statistics.mean(xs):.4g} (min {min(xs):.4g}, max {max(xs):.4g})")
PY
fi

SEED=${1:?usage: side_by_side.sh SEED | summary}
for head in tokens diffusion; do
  dir="$RUNS/seed$SEED/$head"
  if [[ ! -e $dir/model/anygen_decoder.json ]]; then
    resume=(); [[ -e $dir/checkpoint ]] && resume=(--resume)
    $ANYGEN train "training/t2i_$head.yaml" train.seed="$SEED" train.steps="$STEPS" train.out_dir="$dir" "${resume[@]}"
  fi
  if [[ ! -e $dir/eval.json ]]; then
    $ANYGEN eval shapes --model "$dir/model" --only "$TASKS" --n "$N" --json "$dir/eval.json"
  fi
done
