# Breakwater: the verbs a newcomer types. Each target sets up what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help install lint fmt test test-unit test-cluster cluster control-plane demo bench crds chart image docs generate clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv with breakwater and its dev tools

control-plane: ## build (once) the cached etcd/kube-apiserver/kcm/kubectl/helm/kwok binaries
	@bash hack/build-control-plane.sh >/dev/null

lint: $(STAMP) ## ruff, mypy --strict, import-linter layers
	$(BIN)/ruff check operator tests bench hack
	$(BIN)/ruff format --check operator tests bench hack
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python hack/check_module_size.py

fmt: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix operator tests bench hack
	$(BIN)/ruff format operator tests bench hack

test: $(STAMP) control-plane ## every test: unit and cluster suites (cluster tests run on the embedded control plane)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## the fast suites only, no cluster
	$(BIN)/pytest -m "not cluster" $(PYTEST_ARGS)

test-cluster: $(STAMP) control-plane ## the cluster suites only
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

cluster: $(STAMP) control-plane ## start a local control plane and keep it running until Ctrl-C
	$(BIN)/breakwater dev-cluster

demo: $(STAMP) control-plane ## the breaker demo on the embedded control plane
	$(BIN)/python -m breakwater.testing.demo

bench: $(STAMP) control-plane ## run the benchmarks and record results in bench/results/
	$(BIN)/python bench/run_all.py

crds: $(STAMP) ## regenerate crds/ and the chart's CRD copy from the api models
	$(BIN)/breakwater crd --write crds/breakwater.dev_circuitbreakerpolicies.yaml
	$(BIN)/breakwater crd --write charts/breakwater/files/crds/breakwater.dev_circuitbreakerpolicies.yaml

chart: $(STAMP) control-plane ## lint and unit-test the Helm chart
	"$$(bash hack/build-control-plane.sh 2>/dev/null | tail -1)/helm" lint --strict charts/breakwater --set image.repository=registry.example/breakwater
	$(BIN)/pytest tests/unit/chart $(PYTEST_ARGS)

image: ## build the container image (needs a Docker engine; none on the CI machine)
	docker build -t ghcr.io/breakwater-dev/breakwater:$$(grep '^appVersion' charts/breakwater/Chart.yaml | cut -d'"' -f2) .

docs: $(STAMP) ## regenerate docs/api.md from the api models (and the architecture picture, with Graphviz)
	$(BIN)/breakwater api-docs --write docs/api.md
	@if command -v dot >/dev/null; then \
	  dot -Tsvg docs/images/architecture.dot -o docs/images/architecture.svg; \
	  dot -Tpng -Gdpi=110 docs/images/architecture.dot -o docs/images/architecture.png; \
	else echo "docs/images/architecture.*: not re-rendered (no Graphviz: apt-get install graphviz)"; fi

generate: crds docs ## every generated file

clean: ## remove the virtualenv and caches inside the repo (the control-plane cache outside stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache build dist operator/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
