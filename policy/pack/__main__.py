"""The pack's entry point: `python -m pulumi.policy` runs this file and it serves the policies."""

from mlstack_policy.pack import serve

serve()
