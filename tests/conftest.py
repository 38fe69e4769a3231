"""Make the project root (`components`, `harness`) and the policy pack's rules (`mlstack_policy`)
importable for every suite, and have pytest rewrite the assertions of the helper modules the tests
share as it does a test module's, so a failing one shows its values there too."""

import sys

import pytest

from tests.paths import POLICY_PACK, ROOT

for path in (ROOT, POLICY_PACK):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

pytest.register_assert_rewrite(
    "tests.ops.stack_fakes",
    "tests.services.hostile",
    "tests.services.support",
    "tests.unit.configs",
    "tests.unit.runs",
)
