"""mlstack's own Checkov checks, loaded with `checkov --external-checks-dir policy/checkov`.

Checkov imports every module here by its file name, outside any package: each module stands
alone and imports nothing from the project. The checks run in .venv-checkov (tools.policy).
"""
