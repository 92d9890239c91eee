# The two commands a newcomer needs: `make run` and `make test`. Both install what they need from nothing:
# the `server` extra is the nats-server they start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NU := node_modules/@nushell/linux-x64/bin/nu

.PHONY: run test check fmt schemas bench clean install

install: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,server]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/extension-loader dev

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

check: install
	$(BIN)/ruff format --check service tests bench
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

schemas: install
	$(BIN)/python -m service.app.schemas schemas

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules data .pytest_cache .mypy_cache .ruff_cache
