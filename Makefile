# The two commands of the README. Each sets itself up in .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU builds for the test machines; users pick their own through the extras.
TEST_FRAMEWORKS := torch==2.13.0 jax optax

.PHONY: demo test docs verify install clean fuzz-long

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 jax ".[demo,strict]"
	touch $@

$(VENV)/.deps-test: pyproject.toml $(VENV)/.deps-demo
	$(BIN)/pip install -q --disable-pip-version-check $(TEST_FRAMEWORKS) ".[test,docs]"
	touch $@

# The package itself is reinstalled (not editable) every time, so the tests and the demo
# run what a user's `pip install` gets, with backends/ mapped to entroloss.backends.
install: $(VENV)/.deps-demo
	rm -rf build  # a stale build/ would ship files since removed from src/
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --force-reinstall --no-cache-dir .

demo: install
	$(BIN)/entroloss demo

# From the repository root: the tests are a package (tests/), the package under test is the
# installed one (site-packages), never src/ (tests/test_package.py checks).
test: $(VENV)/.deps-test install docs
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The site, offline, warnings as errors (the doctests run in the test suite). Open
# site/index.html in a browser, or serve it with `.venv/bin/mkdocs serve`.
docs: $(VENV)/.deps-test install
	$(BIN)/python docs/figures.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The long fuzz profile (>= 10,000 examples; about 15 minutes here), not part of make test.
fuzz-long: $(VENV)/.deps-test install
	ENTROLOSS_FUZZ=long $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

verify: install
	$(BIN)/entroloss verify

clean:
	rm -rf $(VENV) build src/*.egg-info
