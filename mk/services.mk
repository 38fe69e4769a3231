# The application itself: run it without Kubernetes, and test it over real HTTP.

SERVE_MODEL_PORT := 8081
SERVE_MODEL_GRPC_PORT := 8082
SERVE_GATEWAY_PORT := 8080
SERVE_GATEWAY_METRICS_PORT := 9090
MODEL_PROTO := services/model/mlstack_model/proto/open_inference.proto

.PHONY: serve
serve: venv ## run the app locally on 127.0.0.1, on the SERVE_*_PORT ports of mk/services.mk, which it prints (Ctrl-C stops both; either exiting stops the other)
	@exec $(PY) -m tools.serve --model-port $(SERVE_MODEL_PORT) --model-grpc-port $(SERVE_MODEL_GRPC_PORT) \
	  --gateway-port $(SERVE_GATEWAY_PORT) --gateway-metrics-port $(SERVE_GATEWAY_METRICS_PORT)

.PHONY: oip-check
oip-check: venv ## check the model of `make serve` (same SERVE_* variables) with tritonclient, HTTP and gRPC, default options
	$(PY) -m tools.oip_check --http 127.0.0.1:$(SERVE_MODEL_PORT) --grpc 127.0.0.1:$(SERVE_MODEL_GRPC_PORT)

.PHONY: model-proto
model-proto: venv ## regenerate the model server's gRPC stubs from $(MODEL_PROTO) (committed; a test checks them)
	cd services/model && ../../$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
	  $(patsubst services/model/%,%,$(MODEL_PROTO))

.PHONY: services-test
services-test: venv ## the services over real HTTP on 127.0.0.1, with a real PostgreSQL and SQLite
	$(PY) -m pytest tests/services -q

TEST_TARGETS += services-test
