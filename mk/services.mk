# The application itself: run it without Kubernetes, and test it over real HTTP.

SERVE_MODEL_PORT := 8081
SERVE_MODEL_GRPC_PORT := 8082
SERVE_GATEWAY_PORT := 8080
SERVE_GATEWAY_METRICS_PORT := 9090
MODEL_PROTO := services/model/mlstack_model/proto/open_inference.proto
# The import path of service $(1) (model, gateway): its own folder and the code both services
# share, as their images lay them out under /opt/mlstack/app.
service_path = services/$(1):services/common

.PHONY: serve
serve: venv ## run the app locally: model on 127.0.0.1:8081 (gRPC :8082), gateway on 127.0.0.1:8080, its /metrics on 9090 (Ctrl-C stops both)
	@set -euo pipefail; \
	export MLSTACK_API_KEY="$${MLSTACK_API_KEY:-dev-key}"; \
	store="embedded SQLite"; [ -z "$${DATABASE_URL:-}" ] || store="PostgreSQL from DATABASE_URL"; \
	echo "mlstack: model on http://127.0.0.1:$(SERVE_MODEL_PORT) (gRPC 127.0.0.1:$(SERVE_MODEL_GRPC_PORT))," \
	     "gateway on http://127.0.0.1:$(SERVE_GATEWAY_PORT)" \
	     "($$store), its metrics on http://127.0.0.1:$(SERVE_GATEWAY_METRICS_PORT)/metrics;" \
	     "X-API-Key is MLSTACK_API_KEY (default dev-key). Ctrl-C stops both."; \
	HOST=127.0.0.1 PORT=$(SERVE_MODEL_PORT) GRPC_PORT=$(SERVE_MODEL_GRPC_PORT) PYTHONPATH=$(call service_path,model) \
	  $(PY) -m mlstack_model & model_pid=$$!; \
	trap 'kill -TERM $$model_pid 2>/dev/null || true; wait $$model_pid 2>/dev/null || true' EXIT; \
	HOST=127.0.0.1 PORT=$(SERVE_GATEWAY_PORT) METRICS_PORT=$(SERVE_GATEWAY_METRICS_PORT) \
	  MODEL_URL=http://127.0.0.1:$(SERVE_MODEL_PORT) PYTHONPATH=$(call service_path,gateway) $(PY) -m mlstack_gateway

.PHONY: model-proto
model-proto: venv ## regenerate the model server's gRPC stubs from $(MODEL_PROTO) (committed; a test checks them)
	cd services/model && ../../$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
	  $(patsubst services/model/%,%,$(MODEL_PROTO))

.PHONY: services-test
services-test: venv ## the services over real HTTP on 127.0.0.1, with a real PostgreSQL and SQLite
	$(PY) -m pytest tests/services -q

TEST_TARGETS += services-test
