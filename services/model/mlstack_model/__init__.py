"""mlstack model server: a scikit-learn classifier behind the Open Inference Protocol (REST and
gRPC)."""

SERVER_NAME = "mlstack-model"
SERVER_VERSION = "0.1.0"
