# graph-migrate: the two set-up commands of the README, plus the pieces they are made of.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := docker.io skopeo umoci tar-split oci-image-tool \
	golang-github-opencontainers-image-spec-dev postgresql busybox-static
DEMO_DRIVER ?= vfs

.PHONY: demo test venv system-packages lint unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

# Installs the Debian packages the integration tests use, when missing and when we are root.
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -z "$$missing" ]; then echo "system packages: all present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	else echo "not root: integration tests need" $$missing; fi

lint: venv
	$(BIN)/ruff format --check migrate tests fixtures bench
	$(BIN)/ruff check migrate tests fixtures bench
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

test: venv system-packages lint unit

demo: venv
	@set -e; dest=$$(mktemp -d /tmp/graph-migrate-demo.XXXXXX); \
	echo "== building the sample legacy host ($(DEMO_DRIVER)) in $$dest"; \
	$(BIN)/python -m fixtures sample $$dest --driver $(DEMO_DRIVER); \
	echo "== dry-run audit (nothing on the host changes)"; \
	$(BIN)/graph-migrate run --root $$dest --dry-run --ledger sqlite:///$$dest.ledger.db || test $$? = 1; \
	echo "== migration"; \
	$(BIN)/graph-migrate run --root $$dest --ledger sqlite:///$$dest.ledger.db || test $$? = 1; \
	echo "== verification of the migrated store"; \
	$(BIN)/graph-migrate verify --root $$dest; \
	echo "== the new store"; \
	find $$dest/image -maxdepth 3 | sort | head -40; \
	echo "demo host left in $$dest"

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
