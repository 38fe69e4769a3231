"""The Open Inference Protocol over gRPC: the server and its handlers (``routes``) and its
messages (``protocol``), on the generated stubs of ``mlstack_model.proto``."""
