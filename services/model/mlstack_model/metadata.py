"""What the server and its model say about themselves, the same over REST and gRPC: the server's
extensions and the model's metadata (name, versions, platform, input and output tensors)."""

from __future__ import annotations

from typing import Any

from mlstack_common.tensor_names import INPUT_NAME, OUTPUT_PREDICT, OUTPUT_PROBA

from mlstack_model.artifacts import ArtifactMetadata

PLATFORM = "sklearn"
# The protocol's extensions this server speaks (the binary one over REST).
EXTENSIONS = ("binary_tensor_data",)


def model_metadata(meta: ArtifactMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": [meta.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, meta.n_features]}],
        "outputs": [
            {"name": OUTPUT_PREDICT, "datatype": "INT64", "shape": [-1]},
            {
                "name": OUTPUT_PROBA,
                "datatype": "FP64",
                "shape": [-1, len(meta.class_labels)],
            },
        ],
    }
