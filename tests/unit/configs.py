"""Stack config values the unit tests put in place of a stack file's own."""

from __future__ import annotations

from typing import Any, Final

# `mlstack:cluster` for a cluster the program does not make: a kind cluster's kubeconfig context.
EXISTING: Final[dict[str, Any]] = {"provider": "existing", "context": "kind-mlstack"}
