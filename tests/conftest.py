"""Make the project root (`components`, `harness`) and the policy pack's rules (`mlstack_policy`)
importable for every suite."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "policy" / "pack"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
