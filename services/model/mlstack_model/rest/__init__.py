"""The Open Inference Protocol over REST: the ASGI app (``app``), its handlers (``routes``) and
its payloads, JSON and the binary tensor data extension (``protocol``)."""
