# The application itself: run it without Kubernetes, and test it over real HTTP.

SERVE_MODEL_PORT := 8081
SERVE_MODEL_GRPC_PORT := 8082
SERVE_GATEWAY_PORT := 8080
SERVE_GATEWAY_METRICS_PORT := 9090
MODEL_PROTO := services/model/mlstack_model/proto/open_inference.proto

.PHONY: serve
serve: venv ## run the app locally: model on 127.0.0.1:8081 (gRPC :8082), gateway on 127.0.0.1:8080, its /metrics on 9090 (Ctrl-C stops both; either exiting stops the other)
	@PY=$(PY) SERVE_MODEL_PORT=$(SERVE_MODEL_PORT) SERVE_MODEL_GRPC_PORT=$(SERVE_MODEL_GRPC_PORT) \
	  SERVE_GATEWAY_PORT=$(SERVE_GATEWAY_PORT) SERVE_GATEWAY_METRICS_PORT=$(SERVE_GATEWAY_METRICS_PORT) \
	  exec tools/serve.sh

.PHONY: model-proto
model-proto: venv ## regenerate the model server's gRPC stubs from $(MODEL_PROTO) (committed; a test checks them)
	cd services/model && ../../$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
	  $(patsubst services/model/%,%,$(MODEL_PROTO))

.PHONY: services-test
services-test: venv ## the services over real HTTP on 127.0.0.1, with a real PostgreSQL and SQLite
	$(PY) -m pytest tests/services -q

TEST_TARGETS += services-test
