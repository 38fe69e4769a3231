# Benchmarks (issues 7, 13): our model service against MLServer over REST and gRPC, the gateway
# hop, batches, and the program's evaluation time. Not a test: `make test` never runs or times
# any of it. Needs wrk and PostgreSQL's server from Debian (installed here when missing: e2e/apt.py),
# ghz (the gRPC load generator, built here from its Go module with the machine's Go), MLServer in
# its own virtual environment, and matplotlib in the project's.

MLSERVER_VENV := .venv-mlserver
GHZ_VERSION := v0.93.0
# Where `make bench` builds ghz, and runs the benchmarks with it (bench/load.py's MLSTACK_GHZ).
GHZ := build/tools/ghz
bench: export MLSTACK_GHZ := $(abspath $(GHZ))

$(GHZ):
	@command -v go >/dev/null || { echo "bench: Go is needed to build ghz $(GHZ_VERSION)" >&2; exit 1; }
	GOBIN="$(CURDIR)/build/tools" go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(MLSERVER_VENV)/.installed: bench/requirements-mlserver.txt
	$(call pip_install,$(MLSERVER_VENV),-r bench/requirements-mlserver.txt)
	touch $@

$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements.txt
	$(call pip_install,$(VENV),-r bench/requirements.txt)
	touch $@

.PHONY: bench-tools
bench-tools: ## install wrk and PostgreSQL's server from Debian if they are missing
	@$(PYTHON) -m e2e.apt install-missing --sudo wrk postgresql

.PHONY: bench
bench: venv $(VENV)/.bench-installed $(MLSERVER_VENV)/.installed bench-tools $(GHZ) ## benchmarks: model vs MLServer (REST and gRPC), gateway hop, batches, program evaluation → bench/results/
	$(PY) -m bench.run $(BENCH_ARGS)

.PHONY: bench-failover
bench-failover: venv ## the database's failover, 3 runs of each event on `make e2e-cluster DATABASE_REPLICAS=3` → bench/results/database-failover.md
	$(PY) -m bench.database_failover --dir $(E2E_CLUSTER_DIR)

.PHONY: bench-startup
bench-startup: venv ## pulumi up vs kubectl apply of the same objects, and each pod's way to Ready, on `make e2e-cluster` → bench/results/pod-startup.md
	$(PY) -m bench.pod_startup --dir $(E2E_CLUSTER_DIR)
