# The real-engine end-to-end suite: the Pulumi CLI, the kubernetes provider and a throwaway
# kube-apiserver/etcd/KWOK control plane at the versions pinned in e2e/toolchain/versions.env.
# Binaries already installed at those versions are used as they are (`pulumi` on PATH, Kubernetes
# binaries in $KUBEBUILDER_ASSETS); the rest are built from Go modules and cached outside the work
# tree in $(MLSTACK_E2E_CACHE) (default ~/.cache/mlstack-e2e). Not part of `make test`.

.PHONY: e2e-toolchain
e2e-toolchain: ## link the installed e2e binaries, build the missing ones (Go needed only for those)
	bash e2e/toolchain/build.sh

.PHONY: e2e
e2e: venv e2e-toolchain ## the real-engine e2e suite: pulumi preview/up/refresh/destroy on a throwaway cluster
	$(PY) -m pytest tests/e2e -q --durations=15


# A real local cluster with the app deployed, left running (root: a real node, see e2e/README.md).
# The benchmarks on it find it here without --dir: DEFAULT_DIR in bench/cluster_bench.py.
E2E_CLUSTER_DIR ?= /tmp/mlstack-e2e-cluster
# The database's instance count there: 1 to components.database.MAX_REPLICAS.
DATABASE_REPLICAS ?= 1

.PHONY: e2e-cluster
e2e-cluster: venv e2e-cluster-check e2e-toolchain ## control plane + real node + the app by pulumi up, left running (DATABASE_REPLICAS=N, 1 to components.database.MAX_REPLICAS); ends with export lines
	@$(PY) -m e2e.cluster up $(E2E_CLUSTER_DIR) --database-replicas '$(DATABASE_REPLICAS)'

# e2e-cluster's settings, checked before the toolchain is built or anything starts.
.PHONY: e2e-cluster-check
e2e-cluster-check: venv
	@$(PY) -m e2e.cluster check --database-replicas '$(DATABASE_REPLICAS)'

.PHONY: e2e-clean
e2e-clean: venv ## stop what e2e-cluster started and remove every rule, mount and process it made
	$(PY) -m e2e.cluster down $(E2E_CLUSTER_DIR)
