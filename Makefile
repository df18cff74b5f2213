# Breakwater: the verbs a newcomer types. Each target sets up what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# kwok (pods only look Running) or real (containerd + kubelet in a network namespace; root)
NODE ?= kwok
REAL_NODE := $(if $(filter real,$(NODE)),node,)

.PHONY: help install lint fmt test test-unit test-compiled test-cluster test-node cluster control-plane node node-if-possible promtool prometheus demo demo-adaptive bench crds chart chart-schema image docs plain-defaults dashboard-picture generate clean

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

promtool: ## build (once) promtool from the Prometheus Go module: the chart's PrometheusRule tests
	@bash hack/build-prometheus.sh promtool >/dev/null

prometheus: ## build (once) promtool and the Prometheus server: the dashboard's queries on real metrics
	@bash hack/build-prometheus.sh promtool prometheus >/dev/null

node: control-plane image ## build (once) the real node: kubelet, kube-proxy, kube-scheduler, CoreDNS, pause, and the previous version's image (root: installs Debian packages)
	@bash hack/build-node.sh >/dev/null
	@bash hack/build-previous-image.sh >/dev/null

# `make test` builds the node where it can; elsewhere the node suites skip with the reason, unless
# BREAKWATER_REQUIRE_CLUSTER=1 (CI), where a node that cannot be built fails the run.
node-if-possible: control-plane
	@bash hack/build-node.sh >/dev/null && bash hack/build-image.sh >/dev/null \
	  && bash hack/build-previous-image.sh >/dev/null \
	  || { [ "$${BREAKWATER_REQUIRE_CLUSTER:-}" != 1 ] && echo "make: no real node here (see above); the node suites will skip"; }

lint: $(STAMP) ## ruff, mypy --strict, import-linter layers, module sizes, unique class names
	$(BIN)/ruff check operator tests bench hack
	$(BIN)/ruff format --check operator tests bench hack
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python hack/check_module_size.py
	$(BIN)/python hack/check_unique_names.py

fmt: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix operator tests bench hack
	$(BIN)/ruff format operator tests bench hack

# The unit suites share no cluster and bind only free loopback ports: they run on every core
# (pytest-xdist). The cluster and node suites share one control plane and one node: one process.
UNIT_WORKERS ?= auto
# The cluster suites mostly wait (report rounds, holds): two workers halve them even on two cores,
# a file on one worker (its operator starts once). The real-node suites run in one process: one
# real node per machine. (xdist's loadgroup cannot keep them together: with pytest 9 its group
# suffix never reaches the node id.) JUNIT_DIR: a JUnit report per run (.ci/run checks them).
SUITE_WORKERS ?= 2
JUNIT_DIR ?=
junit = $(if $(JUNIT_DIR),--junitxml=$(JUNIT_DIR)/$(1).xml)

# The suites of what the image compiles (setup.py, [tool.breakwater.compile]), run again against the
# mypyc build: compiled code checks its annotations at run time and binds calls early.
COMPILED_SUITES := tests/unit/proxy tests/unit/breaker

test: $(STAMP) control-plane prometheus node-if-possible ## every test: the unit suites (interpreted, then the hot path compiled), the cluster (kwok) suites, then the real-node suites
	$(BIN)/pytest -m "not cluster and not node" -n $(UNIT_WORKERS) $(PYTEST_ARGS) $(call junit,unit)
	@$(MAKE) --no-print-directory test-compiled JUNIT_DIR="$(JUNIT_DIR)"
	$(BIN)/pytest -m cluster -n $(SUITE_WORKERS) --dist loadfile $(PYTEST_ARGS) $(call junit,cluster)
	$(BIN)/pytest -m node $(PYTEST_ARGS) $(call junit,node)

test-unit: $(STAMP) ## the fast suites only, no cluster
	$(BIN)/pytest -m "not cluster and not node" -n $(UNIT_WORKERS) $(PYTEST_ARGS)

test-compiled: $(STAMP) ## the proxy and breaker suites against the hot path compiled by mypyc, as the image runs it
	compiled="$$(bash hack/build-compiled.sh | tail -1)" && \
	  BREAKWATER_EXPECT_COMPILED=1 PYTHONPATH="$$compiled" $(BIN)/pytest -m "not cluster and not node" \
	  -n $(UNIT_WORKERS) $(PYTEST_ARGS) $(call junit,compiled) $(COMPILED_SUITES)

test-cluster: $(STAMP) control-plane prometheus ## the cluster suites only (kwok)
	$(BIN)/pytest -m cluster $(PYTEST_ARGS)

test-node: $(STAMP) node ## the real-node suites only (root)
	$(BIN)/pytest -m node $(PYTEST_ARGS)

cluster: $(STAMP) control-plane $(REAL_NODE) ## start a local control plane (NODE=real: with a real node) until Ctrl-C
	$(BIN)/breakwater dev-cluster --node $(NODE)

demo: $(STAMP) control-plane $(REAL_NODE) ## the breaker demo (NODE=real: on real pods of a real node)
	$(BIN)/python -m breakwater.testing.demo --node $(NODE)

demo-adaptive: $(STAMP) control-plane ## the tuner moving a threshold from the sidecars' history (about 4½ min)
	$(BIN)/python -m breakwater.testing.demo_adaptive

bench: $(STAMP) control-plane ## run the benchmarks and record results in bench/results/
	$(BIN)/python bench/run_all.py

crds: $(STAMP) ## regenerate crds/ and the chart's CRD copy from the api models
	$(BIN)/breakwater crd --write crds/breakwater.dev_circuitbreakerpolicies.yaml
	$(BIN)/breakwater crd --write charts/breakwater/files/crds/breakwater.dev_circuitbreakerpolicies.yaml

chart: $(STAMP) control-plane promtool ## lint and unit-test the Helm chart
	"$$(bash hack/build-control-plane.sh 2>/dev/null | tail -1)/helm" lint --strict charts/breakwater --set image.repository=registry.example/breakwater
	$(BIN)/pytest tests/unit/chart $(PYTEST_ARGS)

image: ## build the image without a Docker engine (buildah); prints the cached OCI archive
	@bash hack/build-image.sh

docs: $(STAMP) ## regenerate docs/api.md from the api models (and the architecture picture, with Graphviz)
	$(BIN)/breakwater api-docs --write docs/api.md
	@if command -v dot >/dev/null; then \
	  dot -Tsvg docs/images/architecture.dot -o docs/images/architecture.svg; \
	  dot -Tpng -Gdpi=110 docs/images/architecture.dot -o docs/images/architecture.png; \
	else echo "docs/images/architecture.*: not re-rendered (no Graphviz: apt-get install graphviz)"; fi

dashboard-picture: $(STAMP) control-plane prometheus ## docs/images/dashboard.svg: the dashboard's panels, from a real Prometheus during tests/cluster/test_metrics.py
	BREAKWATER_DASHBOARD_DATA=$(CURDIR)/build/dashboard-data.json $(BIN)/pytest -p no:randomly \
	  tests/cluster/test_metrics.py -k dashboard_query
	$(BIN)/python hack/dashboard_picture.py build/dashboard-data.json docs/images/dashboard.svg

plain-defaults: $(STAMP) ## regenerate api/plain/defaults.py (the sidecar's defaults, without pydantic) from the api models
	$(BIN)/python -m breakwater.api.defaultsgen --write operator/breakwater/api/plain/defaults.py

chart-schema: $(STAMP) ## regenerate the chart's values.schema.json and README.md from the annotated values.yaml
	$(BIN)/python hack/values_schema.py
	$(BIN)/python hack/chart_readme.py

generate: crds plain-defaults chart-schema docs ## every generated file

clean: ## remove the virtualenv and caches inside the repo (the control-plane cache outside stays)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache build dist operator/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
