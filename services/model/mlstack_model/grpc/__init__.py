"""The Open Inference Protocol over gRPC: the server and its handlers (``routes``), its messages
(``protocol``), on the generated stubs of ``mlstack_model.proto``, and the bounds on its
connections (``connections``)."""
