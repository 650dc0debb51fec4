# The two commands a new user needs: `make demo` and `make test`. Both set up what is missing first.
VENV := .venv/bin

.PHONY: setup demo test test-fast lint bench soak stack-up stack-down clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/vitalchain demo

test: setup
	$(VENV)/ruff check .
	$(VENV)/pytest -p no:cacheprovider -q -ra --durations=15

test-fast: setup
	bash scripts/test-fast.sh

lint: setup
	$(VENV)/ruff check .

bench: setup
	$(VENV)/python bench/run_all.py

# 10 minutes of the pipeline under random kills and restarts (scripts/soak.py; summary in docs/RELIABILITY.md).
soak: setup
	$(VENV)/python scripts/soak.py

stack-up: setup
	$(VENV)/vitalchain stack up

stack-down:
	$(VENV)/vitalchain stack down

clean:
	-$(VENV)/vitalchain stack down
	rm -rf .state
