# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench bench-quick soak pi-check clean

# The device's footprint: LiteRT, OpenCV, paho-mqtt. No TensorFlow.
$(VENV)/.edge-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[edge]'
	touch $@

# Trainer and tests: adds TensorFlow, scikit-learn, matplotlib, pytest, hypothesis.
$(VENV)/.test-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.edge-installed $@

## demo: the daemon on the bundled mnist-1 model and bundled sample frames (no camera, no broker needed)
demo: $(VENV)/.edge-installed
	@echo "station page: http://127.0.0.1:8080/ (stays up after the replay until Ctrl-C)"
	$(BIN)/lineguard run --config config.yaml --drain-timeout 5 --keep-serving

## test: the whole test suite (needs Debian's mosquitto and systemd-analyze; .ci/run installs them)
test: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q

## test-fast: everything but the slow training and fault scenarios
test-fast: $(VENV)/.test-installed
	$(BIN)/python -m pytest -q -m "not slow"

## bench: all benchmarks, about 12 minutes on 2 cores; writes benchmarks/results/latest.json and latest.md
bench: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks.run --all

## bench-quick: pipeline efficiency only, at most a minute
bench-quick: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks.run --quick

## soak: the daemon for 11 minutes at 30 fps; RSS over time and latency; writes benchmarks/results/soak.json
soak: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks.soak

## pi-check: install and run on arm64 Debian Bookworm and Trixie under emulation and compare with this machine's
## results (as root; Debian's archive and PyPI; roots cached in .pi-check/). README "What was proven on arm64".
pi-check: $(VENV)/.edge-installed
	$(BIN)/python scripts/pi_check.py

clean:
	rm -rf state .pytest_cache
