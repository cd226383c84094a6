# The two commands a new user needs: `make dev` runs the system, `make test` runs the suite.
# Both create the virtual environment first; nothing is installed by hand. The suite's tiers
# (docs/testing.md): `make test-fast` (pure and database tests), `make test` (everything, a
# share of each property test's examples), `make test-long` (everything, all examples).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test test-fast test-long corpus lint bench clean-data venv FORCE

# A venv without the stripe-mock or promtool binary (built by bootstrap) is not ready, whatever
# its stamp.
$(STAMP): pyproject.toml requirements.lock scripts/bootstrap \
		$(if $(and $(wildcard $(VENV)/bin/stripe-mock),$(wildcard $(VENV)/bin/promtool)),,FORCE)
	bash scripts/bootstrap $(VENV)
	touch $(STAMP)

FORCE:

venv: $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/entitled dev

# Three pytest-xdist workers on 2 cores (most of a test is waiting on processes, Kafka and
# Postgres, so a third overlaps the waits), each with its own Kafka and PostgreSQL (a test that restarts one
# disturbs only its own worker); a module runs whole on one worker, so a module-scoped fixture
# starts once.
WORKERS ?= 3
XDIST := -n $(WORKERS) --dist loadscope
PYTEST := $(PY) -m pytest -p no:cacheprovider $(XDIST)

test: $(STAMP)
	$(VENV)/bin/entitled services prepare
	$(PYTEST) --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "pure or database" $(PYTEST_ARGS)

test-long: $(STAMP)
	$(VENV)/bin/entitled services prepare
	HYPOTHESIS_PROFILE=long $(PYTEST) $(PYTEST_ARGS)

# Real payloads of public projects: third-party data, not in this repository.
ENTITLED_STRIPE_CORPUS ?= ../shared/stripe/corpus
corpus: $(STAMP)
	$(VENV)/bin/entitled services prepare
	ENTITLED_STRIPE_CORPUS=$(ENTITLED_STRIPE_CORPUS) $(PY) -m pytest -p no:cacheprovider --public-corpus tests/public_corpus $(PYTEST_ARGS)

# The benchmarks of bench/README.md, one after the other (about an hour on 2 idle cores); each
# prints which of its goals were met. BENCH_QUICK=1 runs the small sizes.
GROWTH_QUICK := 10000,40000,100000
GROWTH_FULL := 40000,200000,1000000
BENCH_SIZES := $(if $(BENCH_QUICK),--events 40000,--events 200000)
BENCH_GROWTH := $(if $(BENCH_QUICK),$(GROWTH_QUICK),$(GROWTH_FULL))
BENCH_REPLAY := $(if $(BENCH_QUICK),--events 100000,--events 1000000)
bench: $(STAMP)
	$(VENV)/bin/entitled services prepare
	$(PY) bench/fold.py $(BENCH_SIZES)
	$(PY) bench/fold.py --growth $(BENCH_GROWTH)
	$(PY) bench/replay.py $(BENCH_REPLAY)
	$(PY) bench/ingest.py
	$(PY) bench/search.py
	$(PY) bench/changes.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean-data: $(STAMP)
	$(VENV)/bin/entitled services down --wipe
