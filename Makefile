# mlstack — every command a user or CI runs. Each target sets up what it needs on first use.
# Fragments in mk/ add their own targets and append to TEST_TARGETS.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK ?= dev
PULUMI ?= pulumi
# $(call pip_install,DIR,ARGS): `pip install ARGS` into the virtual environment DIR, made first
# when missing. Every virtual environment of the project is set up this way.
define pip_install
test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
$(1)/bin/python -m pip install --quiet --disable-pip-version-check $(2)
endef
# The state backend of the targets that run the Pulumi CLI (mk/stack.mk, mk/ops.mk) on $(STACK):
# PULUMI_BACKEND_URL when set, else the backend `pulumi login` chose (`pulumi whoami` answers).
# With neither, the dev stack (the cluster on this machine) falls back to a local file backend in
# .pulumi-local/, and any other stack stops (REQUIRE_BACKEND): its state is on a shared backend
# that a lapsed login or no network hides, and an empty one in its place would create all of its
# resources again. Asked only when such a target runs.
LOCAL_BACKEND := file://$(CURDIR)/.pulumi-local
ifndef PULUMI_BACKEND_URL
ifeq ($(STACK),dev)
PULUMI_LOGGED_IN = $(shell $(PULUMI) whoami --non-interactive >/dev/null 2>&1 && echo yes)
PULUMI_BACKEND = $(if $(PULUMI_LOGGED_IN),,$(LOCAL_BACKEND))
endif
endif
# The recipe line each of those targets runs before its first Pulumi command: it names the
# backend the target acts on, or, when there is none, stops the target saying why and what to do.
# A missing CLI is said first, where to get it: `pulumi whoami`'s failure would read as no login.
REQUIRE_BACKEND = @command -v $(PULUMI) >/dev/null || { echo "make: the Pulumi CLI is not installed: see https://www.pulumi.com/docs/install/" >&2; exit 1; }; \
	if [ -n "$$PULUMI_BACKEND_URL" ]; then backend=$$PULUMI_BACKEND_URL; \
	elif whoami=$$($(PULUMI) whoami --verbose --non-interactive 2>&1); then \
	  backend=$$(sed -n 's/^Backend URL: //p' <<<"$$whoami"); \
	else \
	  why=$$(grep -m 1 '^error: ' <<<"$$whoami" || tail -n 1 <<<"$$whoami"); \
	  echo "make: stack $(STACK) has no state backend: PULUMI_BACKEND_URL is unset and pulumi whoami failed ($$why). Run 'pulumi login <backend>' or set PULUMI_BACKEND_URL; only the dev stack falls back to .pulumi-local/" >&2; \
	  exit 1; \
	fi; \
	echo "make: stack $(STACK), state backend $${backend:-chosen by pulumi login}"

TEST_TARGETS := lint typecheck unit

# $(call program_install,DIR,ARGS): the Pulumi program's environment in DIR: requirements.txt, the
# cloud packages and ARGS resolved together, then the policy pack, which runs in the same
# environment (--no-deps: policy/pack/requirements.txt says why).
PROGRAM_REQUIREMENTS := requirements.txt requirements-cloud.txt policy/pack/requirements.txt
define program_install
$(call pip_install,$(1),-r requirements.txt -r requirements-cloud.txt $(2))
$(call pip_install,$(1),--no-deps -r policy/pack/requirements.txt)
endef

$(VENV)/.installed: $(PROGRAM_REQUIREMENTS) requirements-dev.txt services/model/requirements.txt services/gateway/requirements.txt
	$(call program_install,$(VENV),-r requirements-dev.txt)
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create the virtual environment with every test dependency

$(VENV)/.program-installed: $(PROGRAM_REQUIREMENTS)
	$(call program_install,$(VENV))
	touch $@

.PHONY: program-venv
program-venv: $(VENV)/.program-installed ## .venv with only what `pulumi` runs: the program, the cloud packages, the policy pack (CI's)
# The prerequisite of a target that needs only the program's environment: `venv` where make venv
# made one (it holds the program's), else program-venv, as in CI's jobs.
PROGRAM_ENV = $(if $(wildcard $(VENV)/.installed),venv,program-venv)

.PHONY: lint
lint: venv ## ruff: lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: typecheck
typecheck: venv ## mypy over the program, the services and the tests
	$(VENV)/bin/mypy

.PHONY: unit
unit: venv ## the Pulumi program under Pulumi's mocks, one run per stack
	$(PY) -m pytest tests/unit -q

include $(sort $(wildcard mk/*.mk))

.PHONY: test
test: $(TEST_TARGETS) ## everything CI runs

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort \
		| awk -F'\t' '{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > w) w = length($$1) } \
			END { for (i = 1; i <= NR; i++) printf "%-" w "s  %s\n", name[i], text[i] }'
