# Working with a stack through the real Pulumi CLI: `make up`, `make preview`.
ifndef PULUMI_BACKEND_URL
stack up preview down failover drift: export PULUMI_BACKEND_URL = $(PULUMI_BACKEND)
endif
# A local file backend needs a passphrase for the stack's secrets; dev defaults to an empty one.
ifeq ($(STACK),dev)
export PULUMI_CONFIG_PASSPHRASE ?=
endif

.PHONY: stack
stack: venv ## select (or create) $(STACK) and generate its secrets on first use
	@command -v $(PULUMI) >/dev/null || { echo "make: the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/" >&2; exit 1; }
	@mkdir -p .pulumi-local
	$(PULUMI) stack select --create $(STACK)
	@for key in databasePassword databaseReplicationPassword apiKey secretsDigestKey; do \
	  $(PULUMI) config get mlstack:$$key >/dev/null 2>&1 || { \
	    echo "generating mlstack:$$key for stack $(STACK)"; \
	    $(PY) -c 'import secrets; print(secrets.token_urlsafe(24))' | $(PULUMI) config set --secret mlstack:$$key; \
	  }; \
	done

# The project's policy pack (README, "Policy gates"), with the stack's settings when it has any.
POLICY_PACK := policy/pack
POLICY_CONFIG = $(wildcard $(POLICY_PACK)/config/$(STACK).json)
POLICY_FLAGS = --policy-pack $(POLICY_PACK) $(if $(POLICY_CONFIG),--policy-pack-config $(POLICY_CONFIG))

.PHONY: up
up: stack ## pulumi up the stack (default dev: k3s in Docker on this machine), held to the policy pack
	$(PULUMI) up --stack $(STACK) --yes $(POLICY_FLAGS)

.PHONY: preview
preview: stack ## pulumi preview --diff of the stack, held to the policy pack
	$(PULUMI) preview --stack $(STACK) --diff $(POLICY_FLAGS)

.PHONY: failover
failover: stack ## make a standby of $(STACK)'s PostgreSQL the primary (TO=<instance>; README "Failover")
	PULUMI=$(PULUMI) $(PY) -m tools.database_failover --stack $(STACK) $(if $(TO),--to $(TO))

.PHONY: drift
drift: venv ## exit non-zero and name what drifted when live $(STACK) differs from its state (README "Drift")
	@command -v $(PULUMI) >/dev/null || { echo "make: the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/" >&2; exit 1; }
	@# Reads only: no `stack` prerequisite, which would create the stack and write its secrets.
	PULUMI=$(PULUMI) $(PY) -m tools.drift --stack $(STACK)
