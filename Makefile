# shomei: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test soak sysdeps testdeps screenshots venv bench charts clean-var

run: sysdeps $(STAMP)
	$(BIN)/shomei serve

test: sysdeps testdeps $(STAMP)
	$(BIN)/python -m pytest -q tests

# The README's screenshots, taken by the browser tests.
screenshots: sysdeps testdeps $(STAMP)
	SHOMEI_SCREENSHOTS=1 $(BIN)/python -m pytest -q tests/e2e/test_repository_browser.py tests/e2e/test_online_page_browser.py tests/e2e/test_status_page_browser.py

# Thousands of random event sequences against the reference model of the status rules (tests/model),
# then 100 crash trials (SIGKILL of the service or a worker under traffic; the table is printed).
soak: sysdeps testdeps $(STAMP)
	SHOMEI_MODEL_SOAK=1 $(BIN)/python -m pytest -q --timeout=0 tests/model
	SHOMEI_CRASH_TRIALS=100 $(BIN)/python -m pytest -q -s --timeout=0 tests/e2e/test_crash_campaign.py

# The benchmarks of README.md, one after the other (about 30 minutes; wrk drives the OCSP ones); the
# issuance, OCSP and CRL ones leave their figures in benchmarks/results/*.json, drawn into docs/charts/.
bench: sysdeps $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m benchmarks.bench_issuance --requests 2000 --concurrency 1,4,16,64 --compare-plain --batch 100 --batch-concurrency 2,4,8
	$(BIN)/python -m benchmarks.bench_revocation --online 300
	$(BIN)/python -m benchmarks.bench_ocsp
	$(BIN)/python -m benchmarks.bench_staleness
	$(BIN)/python -m benchmarks.bench_crl --sizes 1000000,10000000
	$(BIN)/python -m benchmarks.bench_audit_verify
	$(BIN)/python -m benchmarks.bench_table_size
	$(BIN)/python -m benchmarks.bench_crl_nation
	$(BIN)/python -m benchmarks.charts

# Redraw docs/charts/*.svg from the last figures in benchmarks/results/ (no benchmark is run).
charts: $(STAMP)
	$(BIN)/python -m benchmarks.charts

# Debian packages: PostgreSQL server, SoftHSMv2, OpenSSL CLI and the venv module.
sysdeps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v softhsm2-util >/dev/null 2>&1 || missing="$$missing softhsm2"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	$(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# What only the tests need: Chromium (the browser tests drive it with Playwright) and a Japanese font.
testdeps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/share/fonts/opentype/ipafont-gothic >/dev/null 2>&1 || missing="$$missing fonts-ipafont-gothic"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

clean-var:
	rm -rf var
