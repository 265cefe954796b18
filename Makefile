# The set-up commands from the README: `make demo` and `make test`; the others serve development and CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The real engines' markers (pyproject.toml): test-fast leaves out every test that starts one.
ENGINES := multiprocess or slurm or podman or s3

.PHONY: demo test test-fast chaos lint provision venv bench clean

$(BIN)/gangrun: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The virtualenv with gangrun and the dev tools, rebuilt when pyproject.toml or constraints.txt change.
venv: $(BIN)/gangrun

# A 2-process DDP run of a small CNN on scikit-learn's handwritten digits, on CPU. It is stopped
# with SIGTERM once step 60 is logged, as a preemption would, then the same command resumes it.
DEMO := $(BIN)/gangrun run --nproc-per-node 2 -m train --config digits output_dir=runs/demo
demo: venv
	rm -rf runs/demo
	@echo "== run 1: SIGTERM once step 60 is logged; the ranks agree to stop, save, gangrun exits 75"
	$(DEMO) & pid=$$!; \
	while kill -0 $$pid 2>/dev/null && ! grep -qs '"step": 60,' runs/demo/metrics.jsonl; do sleep 0.2; done; \
	kill -TERM $$pid; wait $$pid; echo "== run 1 exited $$?"
	@echo "== run 2: the same command resumes from the newest committed checkpoint"
	$(DEMO)

# Debian packages, /etc/hosts names and podman's base image for the real-engine tests; seconds once done.
provision: venv
	$(BIN)/python tests/provision.py

# The whole suite, every tier, after provisioning (what .ci/run runs); pytest's exit 5 (no test ran) is named.
test: provision
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { s=$$?; [ $$s -ne 5 ] || echo "make test: pytest ran no test" >&2; exit $$s; }

# Pure and unit tests only, no real engine: under a minute, for the edit-test loop.
test-fast: venv
	$(BIN)/python -m pytest -m "not ($(ENGINES))" $(PYTEST_ARGS)

# The chaos suite at its full counts (20 SIGKILLs, 10 kills before a commit, 20 stops, 10 hangs); CI runs fewer.
chaos: venv
	GANGRUN_CHAOS=full $(BIN)/python -m pytest -m chaos -s $(PYTEST_ARGS)

# ruff's rules and mypy's types, as configured in pyproject.toml.
lint: venv
	$(BIN)/ruff check
	$(BIN)/mypy

# Every benchmark's side-by-side ratios with their goals, for a person to read; raw figures and a
# chart go to bench/results/latest.json and latest.png (BENCH_ARGS=--quick for fewer repeats).
bench: venv
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# Remove the virtualenv, run outputs and pytest's cache.
clean:
	rm -rf $(VENV) runs .pytest_cache
