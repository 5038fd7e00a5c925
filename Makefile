# The two commands of the README. Each sets itself up in .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU builds for the test machines; users pick their own through the extras.
TEST_FRAMEWORKS := torch==2.13.0 jax optax

.PHONY: demo test lint docs docs-assets verify install clean fuzz-long

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 jax ".[demo,strict]"
	touch $@

$(VENV)/.deps-test: pyproject.toml $(VENV)/.deps-demo
	$(BIN)/pip install -q --disable-pip-version-check $(TEST_FRAMEWORKS) ".[test,docs,lint]"
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
# The suite on TEST_WORKERS processes (pytest-xdist), a file per worker at a time: the
# CI machine's two cores both busy (module-scoped fixtures, the spawned ranks and JAX
# subprocesses stay within their file). TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.deps-test install docs lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# ruff and mypy as pyproject configures them ([tool.ruff], [tool.mypy]): part of make test,
# so CI (.ci/run) refuses what they find. They read the source, not the installed package,
# so no install first; the test deps bring them (the lint extra).
lint: $(VENV)/.deps-test
	$(BIN)/ruff check .
	$(BIN)/mypy

# The site, offline, warnings as errors (the doctests run in the test suite). Open
# site/index.html in a browser straight from disk (pages are .html files, formulas and
# search need no network), or serve it with `.venv/bin/mkdocs serve`.
docs: $(VENV)/.deps-test install
	$(BIN)/python docs/figures.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The long fuzz profile (>= 10,000 examples; about 15 minutes here), not part of make test.
fuzz-long: $(VENV)/.deps-test install
	ENTROLOSS_FUZZ=long $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

# What the site needs from npm, committed under docs/assets so that `make docs` needs no
# network and the site works from disk with no CDN: KaTeX (the minified script, its
# auto-render extension, the stylesheet, the woff2 fonts, ~0.6 MB) typesets the formulas;
# iframe-worker's shim (1.4 kB) lets Material's offline search run from file://. This
# target refreshes that copy.
KATEX_VERSION := 0.19.1
IFRAME_WORKER_VERSION := 1.0.4
docs-assets:
	rm -rf build/npm docs/assets/katex docs/assets/iframe-worker
	mkdir -p build/npm docs/assets/katex/contrib docs/assets/katex/fonts docs/assets/iframe-worker
	cd build/npm && npm pack --silent katex@$(KATEX_VERSION) iframe-worker@$(IFRAME_WORKER_VERSION)
	cd build/npm && tar xzf katex-$(KATEX_VERSION).tgz && cd package \
		&& cp LICENSE dist/katex.min.js dist/katex.min.css ../../../docs/assets/katex/ \
		&& cp dist/contrib/auto-render.min.js ../../../docs/assets/katex/contrib/ \
		&& cp dist/fonts/*.woff2 ../../../docs/assets/katex/fonts/
	cd build/npm && rm -rf package && tar xzf iframe-worker-$(IFRAME_WORKER_VERSION).tgz \
		&& cp package/LICENSE package/shim/index.js ../../docs/assets/iframe-worker/
	echo "KaTeX $(KATEX_VERSION) from npm (make docs-assets); woff2 fonts only" > docs/assets/katex/VERSION
	echo "iframe-worker $(IFRAME_WORKER_VERSION) from npm (make docs-assets): shim/index.js" > docs/assets/iframe-worker/VERSION
	rm -rf build/npm

verify: install
	$(BIN)/entroloss verify

clean:
	rm -rf $(VENV) build src/*.egg-info

# The one-shot GPU run (issue 12): on a bare offline GPU machine with torch, jax, cupy and
# pytest, no venv and no pip install; every figure under $(OUT) or gpu-results/. See
# benchmarks/gpu.py (--dry-run: the same steps on the CPU).
.PHONY: gpu
gpu:
	$(PYTHON) benchmarks/gpu.py
