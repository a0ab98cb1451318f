# `make demo` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM_NAMES := chromium chromium-browser google-chrome
APT_TIMEOUT ?= 300

.PHONY: install chromium demo test test-slow clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the tests that render report.html. Installed here, never by a test: with apt-get when it
# is missing and we are root; otherwise this says why not and succeeds, and those tests skip with the reason.
chromium:
	@for name in $(CHROMIUM_NAMES); do command -v $$name >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: not found, and installing it needs root and apt-get; the report rendering tests will skip"; \
		exit 0; \
	fi; \
	echo "chromium: installing with apt-get (for the report rendering tests)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	timeout $(APT_TIMEOUT) apt-get install -y -q chromium >/dev/null 2>&1 \
		|| { timeout $(APT_TIMEOUT) apt-get update -q >/dev/null 2>&1 \
		     && timeout $(APT_TIMEOUT) apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "chromium: apt-get could not install it; the report rendering tests will skip"

demo: $(STAMP)
	$(BIN)/trustlab demo --out runs/demo

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

# `-m slow` replaces the `-m 'not slow'` of addopts. pytest exits 5 when it selects no test: that is not a failure.
test-slow: $(STAMP) chromium
	@rc=0; $(BIN)/python -m pytest -q -m slow || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "test-slow: pytest selected no test (exit 5): none is marked slow"; exit 0; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) runs .pytest_cache
