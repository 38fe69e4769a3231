"""The model server's tensors by name: the one input it takes and the outputs it gives. The
gateway's requests to it name that input and read ``predict``, so both services take the names
from here."""

from __future__ import annotations

from typing import Final

INPUT_NAME: Final = "input-0"
OUTPUT_PREDICT: Final = "predict"
OUTPUT_PROBA: Final = "predict_proba"
