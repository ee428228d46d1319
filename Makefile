# Two commands on a fresh machine: `make app` runs the dashboard, `make test` runs every test.
# Both create .venv first; `make app` installs the pinned runtime requirements (requirements.txt), `make test` also
# the test tools (requirements-dev.txt: pytest, playwright). Once each; again when a requirements file changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# GPT-2's BPE files for offline use (CI and our machines keep them in ../shared/gpt2-bpe).
BPE_DIR ?= $(abspath ../shared/gpt2-bpe)
export GPT2_BPE_DIR ?= $(if $(wildcard $(BPE_DIR)/encoder.json),$(BPE_DIR),)

.PHONY: app test test-fast screenshot chromium bench clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The browser test drives Debian's Chromium (Playwright's own browser download cannot work offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

app: $(BIN)/.installed
	$(BIN)/python app.py $(ARGS)

test: $(BIN)/.installed-dev chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(BIN)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# Refresh the README's picture (docs/screenshot.png) from the browser test's clean run; `make test` never writes it.
screenshot: $(BIN)/.installed-dev chromium
	HF_HUB_OFFLINE=1 PARITY_SCREENSHOT=$(abspath docs/screenshot.png) $(BIN)/python -m pytest -q -m browser \
	  tests/browser/test_browser.py -k end_to_end $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_generate.py

clean:
	rm -rf $(VENV) .pytest_cache
