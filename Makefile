# The README's commands. Each one does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= data/openclipart

.PHONY: setup test data demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@echo "==> setup: creating $(VENV) and installing requirements-dev.txt (torch is large: a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

test: setup
	@echo "==> test: running the test suite (CPU)"
	$(PY) -m pytest -q tests

data: setup $(DATA)/test_gt.csv

$(DATA)/test_gt.csv:
	@if [ ! -d /usr/share/openclipart/png ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> data: installing the Debian package openclipart-png"; \
	    apt-get update -qq && apt-get install -y -qq openclipart-png; \
	  else \
	    echo "openclipart-png is missing; run: sudo apt-get update && sudo apt-get install -y openclipart-png"; exit 1; \
	  fi; \
	fi
	@echo "==> data: building $(DATA) from /usr/share/openclipart/png (course layout, 64x64)"
	$(PY) prepare_dataset.py --source openclipart --out $(DATA) --overwrite

demo: data
	@echo "==> demo: dataset ready in $(DATA)"

clean:
	rm -rf $(VENV) .pytest_cache
