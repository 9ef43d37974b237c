# millgate: `make demo` runs the product on its embedded demo plant; `make test` runs the whole suite.
# Both set themselves up on a fresh Debian machine: Debian packages, a .venv, the package with its extras.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian's interpreter, not one under /root: function workers run under their own uids and must be
# able to execute the venv's python.
PYTHON3 := $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
DEBIAN_PACKAGES := mosquitto socat acl

.PHONY: deps demo test lint bench chaos clean deb package-test

deps: $(STAMP)

$(STAMP): pyproject.toml scripts/install-debian-packages.sh
	scripts/install-debian-packages.sh $(DEBIAN_PACKAGES)
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: deps
	$(PY) -m gateway.demo

lint: deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Three workers, a test file's tests on one of them (its module fixtures, such as a running gateway, are
# shared): the tests mostly wait on real brokers, supervisord and simulators, so 2 cores keep three busy
# (measured: 413 s for the suite against 580 s with two workers).
test: lint
	$(PY) -m pytest -n 3 --dist loadfile

# Benchmarks (docs/benchmarks.md): bench/results.json, a table and bench/ratios.png; under 10 minutes.
bench: deps
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) -m pytest tests/bench -m bench -s -p no:cacheprovider
	$(PY) -m tests.bench.report --chart bench/ratios.png

# The fault suite against the reference deployment under load; under 20 minutes.
chaos: deps
	$(PY) -m pytest tests/chaos -m chaos -s -p no:cacheprovider

clean:
	rm -rf $(VENV) var bench/results.json .pytest_cache .mypy_cache .ruff_cache

# The Debian package: dist/millgate_<version>_<arch>.deb, then lintian (errors fail the build).
deb:
	packaging/install-build-tools.sh lintian
	packaging/build-deb.sh dist
	lintian --fail-on error dist/millgate_*.deb

# Installs the package into a fresh Debian 12 root made with debootstrap (slow, needs a Debian mirror).
package-test: deps
	packaging/install-build-tools.sh lintian debootstrap
	$(PY) -m pytest tests/ops -m package -p no:cacheprovider
