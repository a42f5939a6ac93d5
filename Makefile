# The README's commands. Each one does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# SOURCE: prepare_dataset.py's --source (openclipart or fashion-mnist); CONFIG: the shipped pair for it
SOURCE ?= openclipart
DATA   ?= data/$(SOURCE)
RESULTS ?= results/demo
CONFIG ?= configs/MaskGit_small_cond.yml

# what each source needs: its Debian package, the folder that package installs, prepare_dataset.py's flags
PKG_openclipart := openclipart-png
DIR_openclipart := /usr/share/openclipart/png
# the split the shipped pair was trained on (RESULTS.md "Leak-free splits"): no near-copy grouping, no held-out
# classes; prepare_dataset.py's defaults build the leak-free split a model trained from scratch should use
ARGS_openclipart := --near-dup-rms 0 --holdout-classes ''
# the generalising model's data (issue 30): the leak-free openclipart split (prepare_dataset.py's defaults: near-copies
# grouped, animals/tools/transportation held out) plus training-only clip art from Debian packages (RESULTS.md)
SRC_clipart := openclipart
PKG_clipart := openclipart-png oxygen-icon-theme gnome-icon-theme fonts-noto-color-emoji
DIR_clipart := /usr/share/openclipart/png /usr/share/icons/oxygen/base/128x128 /usr/share/icons/gnome/256x256 \
               /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
ARGS_clipart := --extra-train /usr/share/icons/oxygen/base/128x128 --extra-train /usr/share/icons/gnome/256x256 \
                --extra-train noto-emoji
PKG_fashion-mnist := dataset-fashion-mnist
DIR_fashion-mnist := /usr/share/datasets/fashion-mnist
# 600 val images (RESULTS.md); the test split is the official test set's either way
ARGS_fashion-mnist := --val-frac 0.01

.PHONY: setup browser test data demo demo-fashion generate app train clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@echo "==> setup: creating $(VENV) and installing requirements-dev.txt (torch is large: a few minutes the first time)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

# tests/test_app.py drives a real browser: Debian's chromium + chromium-driver; tests/test_dataset.py renders emoji with
# fonts-noto-color-emoji (prepare_dataset.py --extra-train noto-emoji). Each test skips with its reason where missing.
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
browser:
	@if ! { command -v chromium && command -v chromedriver && test -f $(EMOJI_FONT); } >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> browser: installing Debian's chromium, chromium-driver and fonts-noto-color-emoji for the tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji; \
	  else \
	    echo "==> browser: chromium/chromedriver/fonts-noto-color-emoji missing and not root (sudo apt-get install chromium chromium-driver fonts-noto-color-emoji): those tests will be skipped"; \
	  fi; \
	fi

test: setup browser
	@echo "==> test: running the test suite (CPU)"
	$(PY) -m pytest -q tests

data: setup $(DATA)/test_gt.csv

$(DATA)/test_gt.csv:
	@if ! ls -d $(DIR_$(SOURCE)) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> data: installing the Debian package $(PKG_$(SOURCE))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKG_$(SOURCE)); \
	  else \
	    echo "$(PKG_$(SOURCE)) is missing; run: sudo apt-get update && sudo apt-get install -y $(PKG_$(SOURCE))"; exit 1; \
	  fi; \
	fi
	@echo "==> data: building $(DATA) from $(DIR_$(SOURCE)) (course layout, 64x64)"
	$(PY) prepare_dataset.py --source $(or $(SRC_$(SOURCE)),$(SOURCE)) --out $(DATA) --overwrite $(ARGS_$(SOURCE))

demo: data
	@echo "==> demo: inpainting the $(DATA) test split with the shipped checkpoints ($(CONFIG))"
	$(PY) inpainting.py --MaskGitConfig $(CONFIG) \
	  --test-maskedimage-path $(DATA)/masked_image --test-mask-path $(DATA)/mask64 \
	  --paste-known --gallery 8 --gt-path $(DATA)/test --output-dir $(RESULTS)
	@echo "==> demo: FID of the inpainted images against $(DATA)/test_gt.csv"
	$(PY) faster-pytorch-fid/fid_score_gpu.py --predicted-path $(RESULTS)/test_results \
	  --gtcsv-path $(DATA)/test_gt.csv --json-out $(RESULTS)/results.json
	@echo "==> demo: done. Inpainted images: $(RESULTS)/test_results/"
	@echo "    gallery (input | steps | result | OpenCV Telea | ground truth): $(RESULTS)/gallery.png"
	@echo "    schedules compared: $(RESULTS)/schedules.png;  FID: $(RESULTS)/results.json"

demo-fashion:  # the same job on Fashion-MNIST with its own shipped pair
	$(MAKE) demo SOURCE=fashion-mnist CONFIG=configs/MaskGit_fashion.yml RESULTS=results/demo-fashion

# images from nothing: 8 of each Fashion-MNIST class with the shipped conditional model (its config's generate: settings)
generate: setup
	@echo "==> generate: 8 images of each Fashion-MNIST class -> results/generate-fashion/<class>_grid.png"
	$(PY) generate.py --MaskGitConfig configs/MaskGit_fashion.yml $(foreach c,0 1 2 3 4 5 6 7 8 9,--class $(c)) --n 8 \
	  --output-dir results/generate-fashion

# the page to paint on (app.py), on http://127.0.0.1:$(PORT); the shipped pair of $(CONFIG)
PORT ?= 7860
app: setup
	@echo "==> app: serving the inpainting page on http://127.0.0.1:$(PORT) (Ctrl-C to stop)"
	$(PY) app.py --port $(PORT) --config $(CONFIG)

# train on your own pictures: make train DATA=path/to/folder [BUDGET=60] [NAME=mine] [FLAGS=--resume]
# (DATA here is the folder of pictures, so it must come from the command line, not the default above)
BUDGET ?= 60
NAME   ?= mine
FLAGS  ?=
train: setup
	@case "$(origin DATA)" in \
	  command\ line|environment) echo "==> train: fine-tuning the shipped pair on $(DATA) in ~$(BUDGET) min -> runs/$(NAME)/"; \
	    $(PY) train.py --data "$(DATA)" --name "$(NAME)" --budget $(BUDGET) $(FLAGS);; \
	  *) case " $(FLAGS) " in \
	    *" --resume "*) $(PY) train.py --name "$(NAME)" --budget $(BUDGET) $(FLAGS);; \
	    *) echo "usage: make train DATA=path/to/folder [BUDGET=60] [NAME=mine] [FLAGS=--resume]"; exit 2;; esac;; esac

clean:
	rm -rf $(VENV) .pytest_cache
