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
APP_LOG := .monailabel_app_test.log

.PHONY: install install-serve install-deploy demo test test-slow lint
install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The serving stack ([serve]: monailabel, monai-deploy-app-sdk) in its own environment: monailabel's pydicom-seg pins
# jsonschema<4, tools.verify_bundles ([dev]) needs jsonschema>=4. monailabel imports torchvision at start, and
# torchvision's compiled ops must match the torch build (PyPI's torchvision fails next to the CPU torch 2.13.0 of .venv:
# "operator torchvision::nms does not exist"), so SERVE_TORCH installs a matching pair (PyPI's builds, which run on a
# CPU). PIP_CONSTRAINT (constraints-serve.txt) keeps that pair while [serve] resolves, also in the build environment of
# sam2 (an sdist monailabel pulls). [serve] downgrades numpy to 1.26 and pydicom to 2.4 (monailabel's pins), here only.
SERVE_VENV ?= .venv-serve
SERVE_TORCH ?= torch==2.14.1 torchvision==0.29.1
install-serve: $(SERVE_VENV)/.installed

$(SERVE_VENV)/.installed: setup.cfg pyproject.toml constraints-serve.txt
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q $(SERVE_TORCH)
	PIP_CONSTRAINT=constraints-serve.txt $(SERVE_VENV)/bin/python -m pip install -q -e ".[serve]"
	touch $@

# The MONAI Deploy app ([deploy]: monai-deploy-app-sdk 4.0.0) in a third environment: the SDK's operators need
# pydicom 3 and MONAI core imports them with `import monai`, while monailabel needs pydicom 2. It needs no torchvision,
# so it takes the same torch as .venv (TORCH).
DEPLOY_VENV ?= .venv-deploy
install-deploy: $(DEPLOY_VENV)/.installed

$(DEPLOY_VENV)/.installed: setup.cfg pyproject.toml
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install -q $(TORCH)
	$(DEPLOY_VENV)/bin/python -m pip install -q -e ".[deploy]"
	touch $@

# Main job: train semantic_mri (Med-DDPM) on 32^3 phantoms for a few CPU minutes (demo overlay), sample the masks
# of two training phantoms with the fast respaced sampler (25 steps), then evaluate: the tumour read back from each
# sample is scored against its mask (Dice printed) and real_vs_sample.png puts the real phantom of the same mask beside
# each generated image. NIfTI samples, masks and PNG previews go to $(DEMO_OUT). The paper's 250-step sampler on the same
# weights: --sampler ddpm --num_inference_steps 250 (about 1.5 minutes per sample on 2 cores).
DEMO_MASKS := bundles/semantic_mri/data/phantoms_whole_head_32/labelsTr/head_00[01].nii.gz
demo: install
	$(BIN)/python -m monai.bundle run --config_file "['$(BUNDLE)/train.yaml','$(BUNDLE)/demo.yaml']"
	$(BIN)/python -m monai.bundle run --config_file "['$(BUNDLE)/inference.yaml','$(BUNDLE)/demo.yaml']" \
		--masks "$(DEMO_MASKS)" --num_samples 1 --seed 0 --sampler respaced_ddpm --num_inference_steps 25 \
		--output_dir $(DEMO_OUT)/samples
	$(BIN)/python -m monai.bundle run --config_file "['$(BUNDLE)/evaluate.yaml','$(BUNDLE)/demo.yaml']" \
		--sample_dir $(DEMO_OUT)/samples --output_dir $(DEMO_OUT)/eval
	@echo ""
	@echo "Samples (NIfTI images + masks, dataset.json), PNG previews and the evaluation report:"
	@find $(DEMO_OUT) -name "*.png" -o -name "*.nii.gz" -o -name "report.md" | sort
	@grep "lesion_dice_mean" $(DEMO_OUT)/eval/report.md

# The default suite runs on two pytest-xdist workers (one file per worker at a time, one torch thread each: see
# tests/conftest.py), then the two app tests, each in its own environment, side by side.
test: install install-serve install-deploy
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile
	@echo "MONAI Label app test (.venv-serve) and MONAI Deploy app test (.venv-deploy), side by side, one thread each:"
	@OMP_NUM_THREADS=1 $(SERVE_VENV)/bin/python -m pytest tests/apps/test_monailabel_app.py > $(APP_LOG) 2>&1 & serve=$$!; \
	OMP_NUM_THREADS=1 $(DEPLOY_VENV)/bin/python -m pytest tests/apps/test_monai_deploy_app.py; deploy=$$?; \
	wait $$serve; served=$$?; cat $(APP_LOG); rm -f $(APP_LOG); test $$deploy -eq 0 && test $$served -eq 0

# The longer tests (marked slow); CI runs them after `make test`. Exit status 5 = none collected, not a failure.
test-slow: install
	$(BIN)/python -m pytest -m slow || test $$? -eq 5

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
