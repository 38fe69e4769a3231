"""The configuration files e2e writes (the node's, its own Docker engine's and registry's, openssl's
certificate extensions), from the templates in e2e/templates/.

A template is the file as it is written, with `$name` (string.Template) where a value goes; every
name must be given. A JSON template's values are given as Python values and written as JSON
(`render_json`); its file ends with a newline, which the written file, as json.dumps wrote it,
does not have.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template
from typing import Final

TEMPLATES: Final = Path(__file__).resolve().parent / "templates"


def render(name: str, **values: object) -> str:
    """Template `name` with `values` put in as they are."""
    return Template((TEMPLATES / name).read_text()).substitute(values)


def render_json(name: str, **values: object) -> str:
    """JSON template `name` with each of `values` put in as a JSON value."""
    text = (TEMPLATES / name).read_text().removesuffix("\n")
    return Template(text).substitute({k: json.dumps(v) for k, v in values.items()})
