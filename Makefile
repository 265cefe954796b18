# The two set-up commands from the README: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test venv bench clean

$(BIN)/gangrun: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

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

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/bench_loop.py

clean:
	rm -rf $(VENV) runs .pytest_cache
