# Quick start: `make demo` (set up, then run the demo on the bundled example) and `make test`.
# Both create .venv if missing, install the pinned stack and the system packages, and are
# fast the second time (stamp files track requirements.txt and pyproject.toml).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.audiosep-installed

.PHONY: setup demo test clean
setup: $(STAMP)
	@bash scripts/setup_system.sh

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "audiosep needs Python >= 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The demo separates the bundled piano/violin example with the default model set (its mask
# network), with BASIS over the NCSN priors started from it and with its NMF model, and the
# drums/bass example with the drums_bass set (latent separation); scores each against the true
# stems (BSSEval v4), writes the listening report (demo_out/listen.html: players, mel pictures,
# scores), and shows the front end: wav → [0, 1] mel (.npy/.json/.png) → wav.
demo: setup
	$(VENV)/bin/audiosep separate examples/piano_violin.wav -o demo_out
	$(VENV)/bin/audiosep evaluate examples/piano_violin demo_out/piano_violin/piano_violin -o demo_out/report --method masknet
	$(VENV)/bin/audiosep separate examples/piano_violin.wav -o demo_out --method basis
	$(VENV)/bin/audiosep evaluate examples/piano_violin demo_out/piano_violin_basis/piano_violin -o demo_out/report_basis --method basis
	$(VENV)/bin/audiosep separate examples/piano_violin.wav -o demo_out --method nmf
	$(VENV)/bin/audiosep evaluate examples/piano_violin demo_out/piano_violin_nmf/piano_violin -o demo_out/report_nmf --method nmf
	$(VENV)/bin/audiosep separate examples/drums_bass.wav -o demo_out -n drums_bass
	$(VENV)/bin/audiosep evaluate examples/drums_bass demo_out/drums_bass/drums_bass -o demo_out/report_drums_bass --method latent
	$(VENV)/bin/audiosep report demo_out -o demo_out/listen.html
	$(VENV)/bin/audiosep mel examples/piano_violin.wav -o demo_out/piano_violin_mel.npy
	$(VENV)/bin/audiosep invert demo_out/piano_violin_mel.npy -o demo_out/piano_violin_mel_roundtrip.wav --method griffinlim

test: setup
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) demo_out .pytest_cache
