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
	$(PY) -m pytest tests/e2e -q

