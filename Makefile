# The two commands of the README. Everything they need is installed by the scripts they call,
# idempotently; run them as often as you like.
.PHONY: run test setup lint bench clean-venv

run:
	@bash scripts/setup.sh
	@bash scripts/run.sh

test:
	@bash scripts/setup.sh
	@bash scripts/test.sh

setup:
	@bash scripts/setup.sh

lint:
	.venv/bin/ruff check geo layers maps api tests bench
	.venv/bin/mypy

bench:
	.venv/bin/python bench/assign.py
	.venv/bin/python bench/intake.py

clean-venv:
	rm -rf .venv .assets
