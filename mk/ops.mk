# Operating mlstack (issue 6): tearing a stack down, and checking the GitHub workflows that preview,
# deploy and review it (they cannot run here, so `make test` validates them against the schemas).

WORKFLOWS := $(wildcard .github/workflows/*.yml .github/workflows/*.yaml)
LOCAL_ACTIONS := $(wildcard .github/actions/*/action.yml)

.PHONY: down
down: venv ## destroy $(STACK) and remove it (refuses while anything in it is protected, e.g. prod)
	$(REQUIRE_BACKEND)
	@state=$$($(PULUMI) stack export --stack $(STACK)) || { \
	  echo "make down: cannot read the state of stack $(STACK) (does it exist? pulumi stack ls)" >&2; exit 1; }; \
	protected=$$(printf '%s' "$$state" | $(PY) -m tools.stack protected) || exit 1; \
	if [ -n "$$protected" ]; then \
	  { echo "make down: stack $(STACK) is protected, so nothing was destroyed. Protected resources:"; \
	    echo "$$protected" | sed 's/^/  /'; \
	    echo "Production data lives here. To tear it down on purpose, lift the protection first:"; \
	    echo "  pulumi config set --stack $(STACK) protect false && pulumi up --stack $(STACK)"; \
	    echo "    (this also lifts the GKE/EKS cluster's own deletion protection), or"; \
	    echo "  pulumi state unprotect --stack $(STACK) --all --yes"; \
	    echo "    (Pulumi's protection only: a GKE/EKS cluster still refuses deletion);"; \
	    echo "then run make down STACK=$(STACK) again."; } >&2; \
	  exit 1; \
	fi
	$(PULUMI_ENGINE) destroy --stack $(STACK) --yes
	@# Keeps Pulumi.$(STACK).yaml: the stack file is part of the project.
	$(PULUMI) stack rm --stack $(STACK) --yes --preserve-config

.PHONY: workflows
workflows: venv ## validate .github/workflows and .github/actions against GitHub's JSON schemas (offline)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-actions $(LOCAL_ACTIONS)

.PHONY: ops
ops: venv ## protect and teardown under the mocks, make down, and what the workflow schema cannot check
	$(PY) -m pytest tests/ops -q

TEST_TARGETS += workflows ops
