# The real-engine end-to-end suite (issue 5): the Pulumi CLI, the kubernetes provider, a throwaway
# kube-apiserver/etcd/KWOK control plane, all built from Go modules (e2e/toolchain/versions.env)
# and cached outside the work tree in $(MLSTACK_E2E_CACHE) (default ~/.cache/mlstack-e2e).

E2E_GO ?= go

.PHONY: e2e-toolchain
e2e-toolchain: ## build the e2e binaries that are missing from the cache (Go needed)
	@command -v $(E2E_GO) >/dev/null || { echo "e2e needs Go (>= 1.26) on PATH" >&2; exit 1; }
	bash e2e/toolchain/build.sh

.PHONY: e2e
e2e: venv e2e-toolchain ## the real-engine e2e suite: pulumi preview/up/refresh/destroy on a throwaway cluster
	$(PY) -m pytest tests/e2e -q

TEST_TARGETS += e2e
