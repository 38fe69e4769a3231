"""The error body both services answer (services/common: mlstack_common.errors), in-process."""

from __future__ import annotations

from mlstack_common.errors import error_body

from tests.services.hostile import error_message


def test_error_body_is_compact_utf8_json_of_the_message_alone() -> None:
    # The encoding of every error answer of both services: compact, non-ASCII as plain UTF-8.
    message = 'input "x" \u2014 missing'
    assert error_body(message) == b'{"error":"input \\"x\\" \xe2\x80\x94 missing"}'
    assert error_message(error_body(message)) == message
