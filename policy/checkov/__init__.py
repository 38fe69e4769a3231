"""mlstack's own Checkov checks (dockerfile_rules.py), loaded with
`checkov --external-checks-dir policy/checkov`.

Checkov imports every module here by its file name, outside any package: a module stands alone
and imports nothing from the project. The checks run in .venv-checkov (tools.policy).
"""
