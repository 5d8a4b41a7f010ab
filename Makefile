# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Each creates its own virtual environment (.venv) and installs the project into it first.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned for reproducible installs; override e.g. TORCH="torch==2.13.0 --index-url ..." for another build
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
BUNDLE := bundles/semantic_mri/configs
STAMP := $(shell date +%Y%m%d_%H%M%S)
DEMO_OUT ?= out/demo_$(STAMP)

.PHONY: install install-serve demo test test-slow lint
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The serving stack ([serve]: monailabel) in its own environment: monailabel's pydicom-seg pins jsonschema<4,
# tools.verify_bundles ([dev]) needs jsonschema>=4. monailabel imports torchvision at start, and torchvision's compiled
# ops must match the torch build: PyPI's torchvision 0.28.0 is built against PyPI's (CUDA) torch 2.13.0 and fails to
# import next to the CPU torch ("operator torchvision::nms does not exist"). SERVE_TORCH installs a matching pair
# (default: PyPI's, several GB of CUDA libraries, which run on a CPU); for a CPU-only pair use
# SERVE_TORCH="torch==2.13.0 torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu". PIP_CONSTRAINT
# (constraints.txt: torch==2.13.0) then keeps that torch while [serve] resolves, also in the build environment of
# sam2 (an sdist monailabel pulls). [serve] downgrades numpy to 1.26 and pydicom to 2.4 (monailabel's pins), here only.
SERVE_VENV ?= .venv-serve
SERVE_TORCH ?= torch==2.13.0 torchvision==0.28.0
install-serve: $(SERVE_VENV)/.installed

$(SERVE_VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q $(SERVE_TORCH)
	PIP_CONSTRAINT=constraints.txt $(SERVE_VENV)/bin/python -m pip install -q -e ".[serve]"
	touch $@

# Main job: train semantic_mri (Med-DDPM) on 32^3 phantoms for a few CPU minutes, then sample two masks with the
# paper's 250-step sampler and with the fast respaced sampler (25 steps, the fast sampler the benchmark recommends);
# NIfTI samples, masks and PNG previews go to $(DEMO_OUT).
demo: install
	$(BIN)/python -m monai.bundle run --config_file "['$(BUNDLE)/train.yaml','$(BUNDLE)/demo.yaml']"
	$(BIN)/python -m monai.bundle run --config_file "['$(BUNDLE)/inference.yaml','$(BUNDLE)/demo.yaml']" \
		--masks "bundles/semantic_mri/data/phantoms_whole_head_32/labelsTr/head_00[01].nii.gz" --num_samples 1 --seed 0 \
		--output_dir $(DEMO_OUT)/paper_sampler
	$(BIN)/python -m monai.bundle run --config_file "['$(BUNDLE)/inference.yaml','$(BUNDLE)/demo.yaml']" \
		--masks "bundles/semantic_mri/data/phantoms_whole_head_32/labelsTr/head_00[01].nii.gz" --num_samples 1 --seed 0 \
		--sampler respaced_ddpm --num_inference_steps 25 --output_dir $(DEMO_OUT)/fast_sampler
	@echo ""
	@echo "Samples (NIfTI images + masks, dataset.json) and PNG previews:"
	@find $(DEMO_OUT) -name "*.png" -o -name "*.nii.gz" | sort

test: install install-serve
	$(BIN)/ruff check .
	$(BIN)/python -m pytest
	$(SERVE_VENV)/bin/python -m pytest tests/apps

# The longer tests (marked slow); CI runs them after `make test`. Exit status 5 = none collected, not a failure.
test-slow: install
	$(BIN)/python -m pytest -m slow || test $$? -eq 5

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
