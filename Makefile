# The two commands a new user needs: `make dev` runs the system, `make test` runs the suite.
# Both create the virtual environment first; nothing is installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test corpus lint clean-data venv FORCE

# A venv without the stripe-mock binary (built by bootstrap) is not ready, whatever its stamp.
$(STAMP): pyproject.toml scripts/bootstrap $(if $(wildcard $(VENV)/bin/stripe-mock),,FORCE)
	bash scripts/bootstrap $(VENV)
	touch $(STAMP)

FORCE:

venv: $(STAMP)

dev: $(STAMP)
	$(VENV)/bin/entitled dev

test: $(STAMP)
	$(VENV)/bin/entitled services prepare
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# Real payloads of public projects: third-party data, not in this repository.
ENTITLED_STRIPE_CORPUS ?= ../shared/stripe/corpus
corpus: $(STAMP)
	$(VENV)/bin/entitled services prepare
	ENTITLED_STRIPE_CORPUS=$(ENTITLED_STRIPE_CORPUS) $(PY) -m pytest -p no:cacheprovider --public-corpus tests/public_corpus $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean-data: $(STAMP)
	$(VENV)/bin/entitled services down --wipe
