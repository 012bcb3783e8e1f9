# The two commands of the README. Everything else is a script under scripts/.
.PHONY: demo test lint format bench

demo:  ## install, migrate, seed demo data and users, start web + workers + beat on :8000
	scripts/demo.sh

test:  ## install, start PostgreSQL + Redis on loopback, lint, run the whole suite
	scripts/test.sh

lint:
	uv run ruff check . && uv run ruff format --check .

format:
	uv run ruff format . && uv run ruff check --fix .
