# Two commands: `make demo` runs the demo site, `make test` runs the whole check.
# Each builds the local .venv on first use (only Python 3.11+ and make needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench system-packages clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found " + sys.version.split()[0] + ")")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo

# As root, install the Debian packages the tests exercise: Mosquitto, Chromium (the
# screen's browser tests) and a CJK font (without one Chinese renders as boxes).
# As a normal user the tests fall back to the pure-Python broker and skip the browser.
system-packages:
	@if [ "$$(id -u)" = 0 ]; then \
		missing=""; \
		command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
		command -v mosquitto_pub >/dev/null || missing="$$missing mosquitto-clients"; \
		[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
		[ -d /usr/share/fonts/truetype/wqy ] || missing="$$missing fonts-wqy-microhei"; \
		if [ -n "$$missing" ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest.py --producers 2000
	$(BIN)/python bench/modbus_poll.py
	$(BIN)/python bench/rtu_bus.py
	$(BIN)/python bench/site_load.py
	$(BIN)/python bench/sync_drain.py
	$(BIN)/python bench/mqtt_ingest.py
	$(BIN)/python bench/alarm_latency.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
