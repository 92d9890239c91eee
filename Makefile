# The two commands a newcomer needs: `make run` and `make test`. Both install what they need from nothing:
# the `server` extra is the nats-server they start.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
NU := node_modules/@nushell/linux-x64/bin/nu

.PHONY: run test check fmt schemas bench soak clean install mutate

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

# Mutation testing of the trust path ([tool.mutmut] in pyproject.toml says which modules and tests): each mutant
# runs against the tests that cover it, then the score per module (killed, time-outs counted as killed, over all
# mutants). Most of an hour on two cores, so never part of `make test` or CI. `make mutate MUTANTS='service.registry.signing*'`
# runs one module's mutants; results are kept in mutants/ and reused by the next run.
MUTANTS ?=
mutate: install
	$(BIN)/mutmut run $(MUTANTS)
	@$(BIN)/mutmut results --all true | awk '\
		{ key = $$1; status = $$2; sub(/:$$/, "", key); module = key; sub(/\.x[^.]*__mutmut_[0-9]+$$/, "", module); \
		  total[module]++; if (status == "killed" || status == "timeout") killed[module]++; \
		  else if (status == "survived") survived[module]++; else if (status == "not") unrun[module]++; \
		  else other[module]++ } \
		END { printf "%-28s %7s %7s %8s %6s %7s %6s\n", "module", "mutants", "killed", "survived", "other", "not run", "score"; \
		  for (m in total) { run = total[m] - unrun[m]; \
		    printf "%-28s %7d %7d %8d %6d %7d %6s\n", m, total[m], killed[m], survived[m], other[m], unrun[m], \
		      run ? sprintf("%.1f%%", 100 * killed[m] / run) : "-" } }'

fmt: install
	$(BIN)/ruff format service tests bench
	$(BIN)/ruff check --fix service tests bench

schemas: install
	$(BIN)/python -m service.app.schemas schemas

bench: install
	$(BIN)/python -m bench

# The edge soak (bench/edge_soak.py): a three-node hub and an edge site with two loaders through faults (the leaf
# link cut, a hub node killed, a loader restarted) under steady requests and publishes, for MINUTES minutes, then
# the count of what was lost (bench/results/edge_soak.md). Never part of `make test`: its quick form is.
MINUTES ?= 10
soak: install
	$(BIN)/python -m bench.edge_soak --minutes $(MINUTES)

clean:
	rm -rf $(VENV) node_modules data mutants .pytest_cache .mypy_cache .ruff_cache
