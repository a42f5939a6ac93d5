# The README's commands. Each one does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DATA   ?= data/openclipart
RESULTS ?= results/demo

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
	@echo "==> demo: inpainting the $(DATA) test split with the shipped checkpoints (configs/MaskGit_small.yml)"
	$(PY) inpainting.py --MaskGitConfig configs/MaskGit_small.yml \
	  --test-maskedimage-path $(DATA)/masked_image --test-mask-path $(DATA)/mask64 \
	  --total-iter 8 --mask-func cosine --paste-known --gallery 8 --gt-path $(DATA)/test --output-dir $(RESULTS)
	@echo "==> demo: FID of the inpainted images against $(DATA)/test_gt.csv"
	$(PY) faster-pytorch-fid/fid_score_gpu.py --predicted-path $(RESULTS)/test_results \
	  --gtcsv-path $(DATA)/test_gt.csv --json-out $(RESULTS)/results.json
	@echo "==> demo: done. Inpainted images: $(RESULTS)/test_results/"
	@echo "    gallery (input | steps | result | ground truth): $(RESULTS)/gallery.png"
	@echo "    schedules compared: $(RESULTS)/schedules.png;  FID: $(RESULTS)/results.json"

clean:
	rm -rf $(VENV) .pytest_cache
