#!/usr/bin/env bash
# The drift check of $STACK for the drift workflow: `python -m tools.drift` (as `make drift`), its
# verdict and Markdown report as step outputs `status` (clean | drift | error) and `report`; the
# step fails unless the stack is clean.
set -uo pipefail
: "${STACK:?}" "${GITHUB_OUTPUT:?}"
report=$(mktemp)
.venv/bin/python -m tools.drift --stack "$STACK" --markdown "$report"
code=$?
case $code in
  0) status=clean ;;
  1) status=drift ;;
  *) status=error ;;
esac
delimiter="drift-report-$(openssl rand -hex 16)"
{
  echo "status=$status"
  echo "report<<$delimiter"
  cat "$report"
  echo "$delimiter"
} >>"$GITHUB_OUTPUT"
exit "$code"
