# pg_backup: every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PGHOST ?= 127.0.0.1
PGPORT ?= 5432
PYTEST_ARGS ?=

.PHONY: demo test lint airflow bench bench-data constraints tools pg-up install clean

# Byte-compiled at install (uv does not by default; pip does, as in deploy/Dockerfile): where
# PYTHONDONTWRITEBYTECODE is set, every task process would otherwise compile each module it
# imports, about 0.5 s per stage process and 2.3 s per `import airflow.sdk` (docs/performance.md).
$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -q plugins dags >/dev/null
	touch $@

install: $(BIN)/.installed

# Command-line tools the tests and the stock-tools restore recipe use (aws: its S3 line);
# chromium for the Backups page's browser test (Playwright drives it: its own browser download
# is not used).
tools:
	@missing=""; \
	for t in age:age zstd:zstd psql:postgresql-client pg_dump:postgresql-client aws:awscli chromium:chromium; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The local PostgreSQL: start it if it does not answer.
pg-up:
	@pg_isready -q -h $(PGHOST) -p $(PGPORT) || { \
	  echo "starting PostgreSQL"; \
	  for v in $$(ls /etc/postgresql 2>/dev/null); do \
	    pg_ctlcluster --skip-systemctl-redirect $$v main start || true; done; \
	  for i in $$(seq 1 30); do pg_isready -q -h $(PGHOST) -p $(PGPORT) && break; sleep 1; done; \
	  pg_isready -h $(PGHOST) -p $(PGPORT); }

demo: install tools pg-up
	$(BIN)/python -m pg_backup.demo

# Integration tests mostly wait on Airflow and PostgreSQL, so 3 workers help even on 2 cores;
# --dist loadfile keeps each file (and the e2e Airflow stack) on one worker.
test: install tools pg-up
	$(BIN)/python -m pytest -n 3 --dist loadfile $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check plugins tests dags
	$(BIN)/ruff format --check plugins tests dags
	$(BIN)/mypy
	$(BIN)/lint-imports

constraints: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/uv pip freeze --python $(BIN)/python \
	  | grep -v -E '^-e|airflow-pg-backup|^uv=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf .demo bench-results

# Scheduler, dag-processor, triggerer and api-server on the demo config (Ctrl-C stops them all).
airflow: install tools pg-up
	$(BIN)/python -m pg_backup.demo airflow

# Benchmarks (not part of `make test`): the voting database at each of SIZES, then the
# scenarios the targets need (ONLY; empty runs every scenario) REPEAT times side by side; report
# in bench-results/ and docs/benchmark.{md,png,json}. About an hour on 2 cores; a quick look:
# `make bench SIZE=1G REPEAT=1`.
SIZE ?=
SIZES ?= $(or $(SIZE),0.25G 1G 4G)
REPEAT ?= 3
ONLY ?= A,C,S,D,D-s3,G
# The content proof's cost is measured on the largest size of the run.
PROOF_DB ?= pgb_bench_$(subst .,_,$(shell echo $(lastword $(SIZES)) | tr A-Z a-z))
BENCH := $(BIN)/python -m tests.benchmarks.bench --host $(PGHOST) --port $(PGPORT)

bench-data: install tools pg-up
	$(BENCH) data $(foreach s,$(SIZES),--size $(s))

bench: install tools pg-up
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev,bench]'
	$(BENCH) run $(foreach s,$(SIZES),--size $(s)) --repeat $(REPEAT) \
		$(if $(ONLY),--only $(ONLY)) --docs docs
	$(BIN)/python -m tests.benchmarks.proof_cost --db $(PROOF_DB) --repeat $(REPEAT) \
		--out bench-results/proof-cost.json
	$(BIN)/python -m tests.benchmarks.report bench-results/results.json docs
