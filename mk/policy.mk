# Rendered manifests and the policy gate (issue 4): what every stack would deploy, rendered under
# Pulumi's mocks, schema-validated (strict, oldest and newest supported Kubernetes: see
# KUBERNETES_VERSIONS in tools/policy.py) and scanned by Checkov; the Dockerfiles scanned by Checkov
# too, with mlstack's own checks from policy/checkov/.
# Checkov lives in a virtual environment of its own: its dependencies clash with pulumi's.

# tools.policy and tests/policy run Checkov from here: DEFAULT_CHECKOV in tools/policy.py.
CHECKOV_VENV := .venv-checkov
MANIFESTS := build/manifests

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(call pip_install,$(CHECKOV_VENV),-r requirements-checkov.txt)
	touch $@

.PHONY: checkov-venv
checkov-venv: $(CHECKOV_VENV)/.installed ## create .venv-checkov with the pinned Checkov

.PHONY: render
render: venv ## render the Kubernetes objects of $(STACK) as YAML to build/manifests/$(STACK)/
	$(PY) -m tools.render --stack $(STACK) --out $(MANIFESTS)/$(STACK)

.PHONY: policy
policy: venv checkov-venv ## every stack: render, validate schemas, Checkov; Checkov on the Dockerfiles; then tests/policy
	$(PY) -m tools.policy --out $(MANIFESTS)
	$(PY) -m pytest tests/policy -q

TEST_TARGETS += policy
