#!/usr/bin/env bash
# One issue per stack, "Drift on <stack>" labelled `drift`: opened, or its body replaced, while the
# stack drifts; closed by the first clean check. A check that could not run, or did not run
# because a deploy of the stack was not completed (drift.yml's gate), leaves it as it is.
# Env: STACK, STATUS (clean | drift | error | skipped), REPORT (tools/drift.py's Markdown),
# DEPLOY_RUNS (for skipped: the unfinished deploy runs that held the stack; none if the gate
# did not finish), GH_REPO, GH_TOKEN.
set -euo pipefail
: "${STACK:?}" "${STATUS:?}" "${GH_REPO:?}"
title="Drift on $STACK"
run_url="${GITHUB_SERVER_URL:-https://github.com}/$GH_REPO/actions/runs/${GITHUB_RUN_ID:-0}"
# The list API, not search: a just-opened issue is found by the next run.
number=$(gh issue list --state open --label drift --limit 100 --json number,title \
  | jq -r --arg title "$title" 'map(select(.title == $title)) | .[0].number // empty')
case "$STATUS" in
  drift)
    body="${REPORT:-}

Found by $run_url. \`make drift STACK=$STACK\` shows the same report. The check writes nothing,
so \`pulumi up\` alone still diffs against a state that has not seen the change and does nothing
about it. \`pulumi refresh --stack $STACK\` records what is live (a deletion too), then
\`pulumi up --stack $STACK\` puts back what the program says; or change the program to adopt
what changed. The next clean check closes this issue."
    if [ -n "$number" ]; then
      gh issue edit "$number" --body "$body"
    else
      gh label create drift --color D93F0B --description "A live stack differs from its state" --force
      gh issue create --title "$title" --label drift --body "$body"
    fi
    ;;
  clean)
    if [ -n "$number" ]; then
      gh issue close "$number" --comment "No drift on $STACK any more: $run_url"
    fi
    ;;
  skipped)
    if [ -n "${DEPLOY_RUNS:-}" ]; then
      why="deploy runs not completed hold $STACK: $DEPLOY_RUNS"
    else
      why="the gate that looks for unfinished deploy runs did not finish (its job says why)"
    fi
    # An annotation on the run's page: a run whose checks were skipped is green, and a prod
    # approval left waiting for days would skip every morning's check in silence otherwise.
    echo "::warning title=Drift check of $STACK skipped::the drift check of $STACK was skipped, $why: issue ${number:-none} left as it is"
    ;;
  *)
    echo "the drift check of $STACK did not run to the end: issue ${number:-none} left as it is"
    ;;
esac
