# Working with a stack through the real Pulumi CLI: `make up`, `make preview`.
ifndef PULUMI_BACKEND_URL
stack up preview down switchover backup restore drift: export PULUMI_BACKEND_URL = $(PULUMI_BACKEND)
endif
# A local file backend needs a passphrase for the stack's secrets; dev defaults to an empty one.
ifeq ($(STACK),dev)
export PULUMI_CONFIG_PASSPHRASE ?=
endif

# `make stack` creates $(STACK) where the backend has none; `up` and `preview`, which run it first,
# create dev alone. Any other stack they only select: logged in to another backend than the
# stack's, they would otherwise begin an empty stack there, whose `up` makes every resource again.
STACK_SELECT = $(PULUMI) stack select $(if $(or $(filter stack,$(MAKECMDGOALS)),$(filter dev,$(STACK))),--create )$(STACK)

.PHONY: stack
stack: $(PROGRAM_ENV) ## select (or create) $(STACK) and generate its secrets on first use
	$(REQUIRE_BACKEND)
	@mkdir -p .pulumi-local
	@echo "$(STACK_SELECT)"; $(STACK_SELECT) || { \
	  echo "make: stack $(STACK) could not be selected on that backend (above). If it is not there yet, 'make stack STACK=$(STACK)' creates it: up and preview create only dev, so that a login to another backend cannot begin an empty $(STACK)" >&2; \
	  exit 1; }
	PULUMI=$(PULUMI) $(PY) -m tools.stack_secrets --stack $(STACK)

# The project's policy pack (README, "Policy gates"), with the stack's settings when it has any.
POLICY_PACK := policy/pack
POLICY_CONFIG = $(wildcard $(POLICY_PACK)/config/$(STACK).json)
POLICY_FLAGS = --policy-pack $(POLICY_PACK) $(if $(POLICY_CONFIG),--policy-pack-config $(POLICY_CONFIG))

# The engine commands (up, preview, destroy) through tools/pulumi_cli.py, which gives SIGINT back its
# default: the CLI stops its plugins by SIGINT, and each command would wait 5 s for one that
# inherited it ignored (make started in the background of a script).
PULUMI_ENGINE = PULUMI=$(PULUMI) $(PY) -m tools.pulumi_cli

.PHONY: up
up: stack ## pulumi up the stack (default dev: k3s in Docker on this machine), held to the policy pack
	$(PULUMI_ENGINE) up --stack $(STACK) --yes $(POLICY_FLAGS)

.PHONY: preview
preview: stack ## pulumi preview --diff of the stack, held to the policy pack
	$(PULUMI_ENGINE) preview --stack $(STACK) --diff $(POLICY_FLAGS)

.PHONY: switchover
switchover: venv ## Patroni's switchover of $(STACK)'s PostgreSQL primary (TO=<instance>, else Patroni picks)
	@# Reads the stack only: no `stack` prerequisite, which would create the stack and write its secrets.
	$(REQUIRE_BACKEND)
	PULUMI=$(PULUMI) $(PY) -m tools.database_switchover --stack $(STACK) $(if $(TO),--to $(TO))

.PHONY: backup
backup: venv ## a full base backup of $(STACK)'s PostgreSQL now (TYPE=diff|incr; README "Backups and restore")
	$(REQUIRE_BACKEND)
	PULUMI=$(PULUMI) $(PY) -m tools.database_backup backup --stack $(STACK) $(if $(TYPE),--type $(TYPE))

.PHONY: restore
restore: venv ## $(STACK)'s PostgreSQL as it was at TIME='2026-12-04 21:30:00+00:00' (README "Backups and restore")
	@test -n "$(TIME)" || { echo "make: restore needs TIME='YYYY-MM-DD HH:MM:SS+00:00', the moment to go back to" >&2; exit 2; }
	$(REQUIRE_BACKEND)
	PULUMI=$(PULUMI) $(PY) -m tools.database_backup restore --stack $(STACK) --time "$(TIME)"

.PHONY: drift
drift: venv ## exit non-zero and name what drifted when live $(STACK) differs from its state (README "Drift")
	@# Reads only: no `stack` prerequisite, which would create the stack and write its secrets.
	$(REQUIRE_BACKEND)
	PULUMI=$(PULUMI) $(PY) -m tools.drift --stack $(STACK)
