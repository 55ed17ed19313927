# pgbalancer developer entry points. `make demo` and `make test` work on a fresh
# Debian 12 machine as root: they install what is missing and nothing else.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OS_PACKAGES := postgresql-15 postgresql-client-15 iproute2 iputils-arping mosquitto tmux zsh
PG_BIN := /usr/lib/postgresql/15/bin

.PHONY: help os-deps venv lint typecheck pytest test demo demo-stop docs clean

help:
	@echo "make demo       start PostgreSQL (primary + 2 standbys) and pgbalancer, run traffic, show results"
	@echo "make demo-stop  stop everything the demo started"
	@echo "make test       ruff + mypy + the whole pytest suite (real PostgreSQL)"
	@echo "make docs       regenerate docs/configuration.md from the config model"

# Installs only the OS packages that are missing. Debian's postgresql-15 would
# otherwise create and start a 'main' cluster on port 5432, which is ours.
os-deps:
	@missing=""; \
	for p in $(OS_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing OS packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO mkdir -p /etc/postgresql-common; \
	  grep -qs '^create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf \
	    || echo 'create_main_cluster = false' | $$SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null; \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	  case " $$missing " in *" mosquitto "*) \
	    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then \
	      echo "==> stopping the mosquitto service the package started: it would hold pgbalancer's MQTT port 1883"; \
	      $$SUDO systemctl disable --now mosquitto; \
	    fi;; \
	  esac; \
	fi; \
	id postgres >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres; }; \
	test -x $(PG_BIN)/initdb || { echo "PostgreSQL 15 binaries missing in $(PG_BIN): install postgresql-15" >&2; exit 1; }

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing pgbalancer and its test extras into $(VENV)"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	@echo "==> ruff"
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

typecheck: venv
	@echo "==> mypy"
	@$(VENV)/bin/mypy

# pytest exits 5 when it collected no tests; that is not a failure of the suite.
pytest: venv os-deps
	@echo "==> pytest"
	@rc=0; $(VENV)/bin/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test: os-deps venv lint typecheck pytest

docs: venv
	@$(PY) -m pgbalancer.config --markdown > docs/configuration.md
	@echo "wrote docs/configuration.md"

demo: os-deps venv
	@$(PY) -m pgbalancer.devtools.demo up

demo-stop: venv
	@$(PY) -m pgbalancer.devtools.demo down

clean: demo-stop
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
