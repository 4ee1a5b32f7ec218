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

# Reproduce the bundled default model from scratch (tokenizers -> shards -> decoder -> bundle).
# One thread per job (faster than two on a busy 2-core machine). See README "Default model".
.PHONY: default-model
default-model: setup
	ANYGEN_THREADS=1 $(BIN)/anygen tokenizer train tokenizers/text.yaml
	ANYGEN_THREADS=1 $(BIN)/anygen tokenizer train tokenizers/shapes_image.yaml
	ANYGEN_THREADS=1 $(BIN)/anygen tokenizer train tokenizers/melody_audio.yaml
	$(BIN)/anygen tokenizer assemble --text runs/tokenizers/text --image runs/tokenizers/shapes_image \
		--audio runs/tokenizers/melody_audio --image-keep --out runs/tokenizer
	ANYGEN_THREADS=1 $(BIN)/anygen pretokenize training/shapes_data.yaml
	ANYGEN_THREADS=1 $(BIN)/anygen train training/shapes.yaml
	$(BIN)/anygen bundle runs/decoder/shapes/model --out anygen/assets/default
