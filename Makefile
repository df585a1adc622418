# owuibuild: every routine action. `make demo` sets up and renders the default blueprint;
# `make test` installs the test tools and runs every test tier.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
BLUEPRINT ?= blueprints/seed-example.yml
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit lint bench bench-boot golden mutate clean system-deps

$(BIN)/owuibuild: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

setup: $(BIN)/owuibuild

demo: setup
	$(BIN)/owuibuild validate $(BLUEPRINT)
	$(BIN)/owuibuild render $(BLUEPRINT)

system-deps:
	bash tests/infra/system-deps.sh

test: setup system-deps
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check builder tests bench
	$(BIN)/ruff format --check builder
	$(BIN)/mypy

golden: setup
	$(BIN)/pytest tests/unit/test_golden.py --update-golden

# Mutation audit (not CI): each listed bug applied to a copy of builder/, fast tiers run.
mutate: setup
	$(BIN)/python tests/mutate.py $(MUTATE_ARGS)

bench: setup
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/boot_bench.py
	$(BIN)/python bench/recovery_bench.py

# Boots the VMs again (vanilla pair, golden pair, bare: about an hour under TCG) and prints them side by side.
bench-boot: setup system-deps
	$(BIN)/python bench/boot_bench.py --measure

clean:
	rm -rf out/*/ .pytest_cache .mypy_cache .ruff_cache
