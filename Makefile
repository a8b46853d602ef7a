# The two commands a fresh machine needs: `make demo` and `make test`.
# Both set the host up first (apt packages when root, uv, the Python
# environment, the debian:12 environment image).

UV ?= uv
PYTEST_ARGS ?=

.PHONY: setup environment demo test check lint typecheck bench clean

setup:
	@bash scripts/setup-host.sh

environment: setup
	$(UV) run pyro env pull debian:12

demo: environment
	$(UV) run pyro demo

test: environment
	$(UV) run pytest -n 2 $(PYTEST_ARGS)

check: setup
	$(UV) run ruff check src tests benchmarks
	$(UV) run ruff format --check src tests benchmarks
	$(UV) run mypy

lint: check

bench: environment
	$(UV) run python benchmarks/runtime.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
