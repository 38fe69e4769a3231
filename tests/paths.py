"""Where the tests find the project's parts on disk. Light on purpose (pathlib alone): the top
conftest reads it before it has put the project root and the policy pack on sys.path, so it can
import nothing of the program's."""

from __future__ import annotations

from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
# The policy pack: its PulumiPolicy.yaml, its stacks' config/, and `mlstack_policy`, its rules.
POLICY_PACK: Final = ROOT / "policy" / "pack"
