# The two commands a fresh machine needs: `make demo` and `make test`.
# Both set the host up first (apt packages when root, uv, the Python
# environment, the debian:12 environment image).

UV ?= uv
PYTEST_ARGS ?=

USE_CASES = cold-start-validation repro-fix-loop parallel-workspaces untrusted-inspection review-eval
# The environment the use-case smokes' servers use (`make smoke-use-cases USE_CASE_ENVIRONMENT=...`).
USE_CASE_ENVIRONMENT ?= debian:12
export USE_CASE_ENVIRONMENT

.PHONY: setup environment build-environment inspector host-clis demo test check lint typecheck dist \
	examples svg-term walkthrough \
	bench clean smokes smoke-use-cases smoke-daily-loop smoke-real-repo \
	$(addprefix smoke-,$(USE_CASES))

setup:
	@bash scripts/setup-host.sh

environment: setup
	$(UV) run pyro env pull debian:12

# `env pull` took the warm snapshots; `pyro prepare` finds them (4.5's Prepare lines)
# and the demo's VM restores one.
demo: environment
	$(UV) run pyro prepare
	$(UV) run pyro demo

# The MCP Inspector (pinned in tools/mcp-inspector) is a third-party MCP client
# the tests drive the server with.
inspector:
	cd tools/mcp-inspector && npm ci --no-audit --no-fund --loglevel=error

# The chat hosts' own CLIs (Claude Code, Codex, OpenCode), pinned in
# tools/host-clis: the tests register pyro with them and read their listings.
# `npm install`, not `npm ci`: the registry these machines reach lacks
# opencode's macOS builds, so `npm ci` calls the lockfile out of sync; npm
# install still takes the lockfile's versions and integrity hashes.
host-clis:
	cd tools/host-clis && npm install --no-audit --no-fund --loglevel=error

# The tests, then every smoke: the five use-case recipes through a real MCP
# session, the daily loop through the command Claude Code registers, and the
# real-repo qualification (two projects from the package index, installed and
# tested in the guest; it says SKIPPED loudly when the index is unreachable).
test: environment inspector host-clis svg-term
	$(UV) run pytest -n 2 $(PYTEST_ARGS)
	$(MAKE) --no-print-directory smokes

smokes: smoke-use-cases smoke-daily-loop smoke-real-repo

# The wheel and sdist in dist/, checked (metadata and README render) with twine.
# Install one with `uv tool install dist/pyro_mcp-*.whl`, or run it without
# installing: `uvx --from dist/pyro_mcp-*.whl pyro doctor`.
dist:
	rm -rf dist
	$(UV) build
	$(UV) tool run twine check --strict dist/*

# svg-term-cli, pinned: renders the recorded walkthroughs as animated SVGs.
svg-term:
	cd tools/svg-term && npm ci --no-audit --no-fund --loglevel=error

# The README's terminal walkthroughs (first run, the workspace loop), recorded
# from a real run into docs/assets/walkthrough-*.cast and rendered as SVG.
walkthrough: environment svg-term
	$(UV) run python scripts/record_walkthrough.py

# examples/'s host config files, as `pyro host print-config` prints them
# (tests/docs/test_examples.py fails when they drift).
examples: setup
	$(UV) run python -m tests.docs.test_examples --write

# The toolchain environment the real-repo recipes use.
build-environment: setup
	$(UV) run pyro env pull debian:12-build

smoke-use-cases: environment
	$(UV) run python -m smokes.use_cases

$(addprefix smoke-,$(USE_CASES)): smoke-%: environment
	$(UV) run python -m smokes.use_cases $*

smoke-daily-loop: environment host-clis
	$(UV) run python -m smokes.daily_loop

smoke-real-repo: build-environment
	$(UV) run python -m smokes.real_repo

check: setup
	$(UV) run ruff check src tests benchmarks smokes examples scripts
	$(UV) run ruff format --check src tests benchmarks smokes examples scripts
	$(UV) run mypy

lint: check

bench: environment
	$(UV) run python benchmarks/runtime.py
	$(UV) run python benchmarks/warm.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache tools/mcp-inspector/node_modules \
		tools/host-clis/node_modules
