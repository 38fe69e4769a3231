"""`make drift`: does a live stack still match its state? (README, "Drift").

A refresh preview (`pulumi refresh --preview-only`, through the Automation API) reads every
resource of the stack from the cloud and the cluster and writes nothing: not the state, and not
the operator's selected stack either (every command names the stack it checks). The engine
decides which resources changed (with the provider's own diff, so a Deployment's status or
resourceVersion is no change); this module names each one and the properties that moved, old
value and new, and exits non-zero when anything did. The scheduled drift workflow runs the same
module and files the same report as an issue.

What is *not* drift is the program's to say, never this module's: a property under the
resource's `ignoreChanges` (recorded in the state by every `pulumi up`, e.g. the replica count of
a Deployment an autoscaler owns) is listed as ignored, with the rule that ignores it, and does
not fail the check. The engine's refresh hands those rules to the provider's diff, and
pulumi-kubernetes leaves the paths they cover out of it, so a Kubernetes object's ignored property
never reaches this module: its own check is a safety net, for a diff that keeps them (a provider's
that does not honour the rules, the outputs-only diff of PULUMI_ENABLE_LEGACY_REFRESH_DIFF).

    python -m tools.drift --stack prod [--markdown report.md]

Exit status: 0 no drift, 1 drift (the report names it), 2 the check could not run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pulumi import automation as auto

import tools.stack
from harness.program import is_secret, urn_type_name
from tools import pulumi_cli

# Step results of a refresh that mean the live resource differs from the state.
DRIFT_OPS: Final = {"update": "changed", "delete": "deleted", "replace": "replaced"}
# Longest rendering of one value in the report; a whole ConfigMap's data is cut short.
VALUE_CHARS: Final = 120
EXIT_CLEAN, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2
# Seconds `pulumi stack export` may take: it reads the state, and calls no provider.
EXPORT_TIMEOUT: Final = 120

PathKey = str | int
_SEGMENT: Final = re.compile(r'\.?([^.\[\]"]+)|\[(\d+|\*)\]|\["((?:[^"\\]|\\.)*)"\]')


def parse_path(path: str) -> tuple[PathKey, ...]:
    """A Pulumi property path (`spec.replicas`, `metadata.annotations["a.b/c"]`,
    `spec.containers[0].image`, `spec.*`) as its keys; list indices become ints."""
    keys: list[PathKey] = []
    position = 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None or match.end() == position:
            raise ValueError(f"not a property path: {path!r}")
        name, index, quoted = match.groups()
        if index is not None:
            keys.append(index if index == "*" else int(index))
        elif quoted is not None:
            keys.append(re.sub(r"\\(.)", r"\1", quoted))
        else:
            keys.append(name)
        position = match.end()
    return tuple(keys)


def format_path(keys: Sequence[PathKey]) -> str:
    """The inverse of `parse_path`, as Pulumi prints paths."""
    text = ""
    for key in keys:
        if isinstance(key, int) or key == "*":
            text += f"[{key}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", key):
            text += f".{key}" if text else key
        else:
            text += '["' + key.replace("\\", "\\\\").replace('"', '\\"') + '"]'
    return text


def covers(rule: Sequence[PathKey], keys: Sequence[PathKey]) -> bool:
    """Whether an `ignoreChanges` path covers a property: it names the property or one of its
    parents (`*` matches any one key), as the engine applies it to a diff."""
    if len(rule) > len(keys):
        return False
    return all(r in ("*", k) for r, k in zip(rule, keys, strict=False))


def property_changes(old: Any, new: Any, prefix: tuple[PathKey, ...] = ()) -> list[Change]:
    """Every leaf where `old` and `new` differ, by path."""
    if old == new:
        return []
    if is_secret(old) or is_secret(new):
        return [Change(prefix, old, new)]
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found: list[Change] = []
        for key in sorted(set(old) | set(new), key=str):
            found += property_changes(
                old.get(key, _MISSING), new.get(key, _MISSING), (*prefix, key)
            )
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            found += property_changes(a, b, (*prefix, index))
        return found
    return [Change(prefix, old, new)]


class _Missing:
    def __repr__(self) -> str:
        return "(none)"


_MISSING: Final = _Missing()


@dataclass(frozen=True)
class Change:
    keys: tuple[PathKey, ...]
    old: Any
    new: Any

    @property
    def path(self) -> str:
        return format_path(self.keys)


def _hidden(value: Any) -> bool:
    """Whether `value` is a secret: encrypted in the state, or as the engine's events show one
    (`show_secrets=False`)."""
    return is_secret(value) or value == "[secret]"


def render(value: Any) -> str:
    """One value for the report, on one line: secrets stay secret, a string is quoted with its
    control characters (a ConfigMap file's line breaks, a tab) as escapes, long values are cut
    short."""
    if value is _MISSING:
        return "(none)"
    if _hidden(value):
        return "[secret]"
    # repr() escapes the strings inside a list or a map already.
    text = repr(value) if not isinstance(value, str) else _quoted(value)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def _quoted(text: str) -> str:
    r"""A string in double quotes, escaped as repr() escapes one: `\` and `"` behind a backslash
    (so a value's own `\n`, two characters, is not read as a line break), and each character that
    is not printable (`\n`, `\r`, `\t`, `\x1b`, `\u2028`...) as its escape."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _printable(escaped) + '"'


def _printable(text: str) -> str:
    """`text` with each character that is not printable as repr() escapes it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _lookup(state: Mapping[str, Any] | None, keys: Sequence[PathKey]) -> Any:
    """The value at `keys`; a secret on the way (a Secret's whole `data`, say, to which the
    provider's diff names a key) is the value, its parts being as secret as the whole."""
    value: Any = state if state is not None else _MISSING
    for key in keys:
        if _hidden(value):
            return value
        present = (isinstance(value, Mapping) and key in value) or (
            isinstance(value, list) and isinstance(key, int) and key < len(value)
        )
        if present:
            value = value[key]
        else:
            return _MISSING
    return value


@dataclass(frozen=True)
class Property:
    path: str
    old: str
    new: str
    ignored_by: str | None = None  # the `ignoreChanges` rule of the program that covers it


@dataclass(frozen=True)
class Resource:
    urn: str
    change: str  # "changed" | "deleted" | "replaced"
    properties: tuple[Property, ...]

    @property
    def type(self) -> str:
        return urn_type_name(self.urn)[0]

    @property
    def name(self) -> str:
        return urn_type_name(self.urn)[1]

    @property
    def drifted(self) -> tuple[Property, ...]:
        return tuple(p for p in self.properties if p.ignored_by is None)

    @property
    def is_drift(self) -> bool:
        # A deletion is drift whatever the program ignores; a change, if it moved any property
        # the program does not ignore (or the engine named none).
        return self.change != "changed" or not self.properties or bool(self.drifted)


@dataclass(frozen=True)
class DriftReport:
    stack: str
    resources: tuple[Resource, ...] = field(default=())

    @property
    def drifted(self) -> tuple[Resource, ...]:
        return tuple(r for r in self.resources if r.is_drift)

    @property
    def ignored(self) -> tuple[tuple[Resource, Property], ...]:
        return tuple((r, p) for r in self.resources for p in r.properties if p.ignored_by)

    @property
    def clean(self) -> bool:
        return not self.drifted

    def text(self) -> str:
        lines = [self._headline()]
        for resource in self.drifted:
            lines.append(f"  {resource.type} {resource.name}: {resource.change}")
            for prop in resource.drifted:
                lines.append(f"    {prop.path}: {prop.old} => {prop.new}")
        if self.ignored:
            lines.append("Not drift (the program's ignoreChanges):")
            for resource, prop in self.ignored:
                lines.append(
                    f"  {resource.type} {resource.name} {prop.path}: {prop.old} => {prop.new}"
                    f" (ignoreChanges {prop.ignored_by})"
                )
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [self._headline(), ""]
        if self.drifted:
            lines += ["| resource | property | in the state | live |", "| --- | --- | --- | --- |"]
            for resource in self.drifted:
                name = f"`{resource.type}` `{resource.name}`"
                if not resource.drifted:
                    lines.append(f"| {name} | ({resource.change}) | | |")
                for prop in resource.drifted:
                    lines.append(
                        f"| {name} | {_cell(prop.path)} | {_cell(prop.old)} | {_cell(prop.new)} |"
                    )
        if self.ignored:
            lines += ["", "Not drift (the program's `ignoreChanges`):", ""]
            for resource, prop in self.ignored:
                lines.append(
                    f"- `{resource.type}` `{resource.name}` {_code(prop.path)}: "
                    f"{_code(prop.old)} => {_code(prop.new)} (ignoreChanges `{prop.ignored_by}`)"
                )
        return "\n".join(lines) + "\n"

    def _headline(self) -> str:
        if self.clean:
            return f"No drift on stack {self.stack}: the live resources match the state."
        count = len(self.drifted)
        noun = "resource differs" if count == 1 else "resources differ"
        return f"Drift on stack {self.stack}: {count} {noun} from the state."


def _code(text: str) -> str:
    """`text` as a Markdown code span on one line (`render` escapes a value's control characters
    already; a path's are escaped here), with no backquote to end the span early."""
    return "`" + _printable(text).replace("`", "'") + "`"


def _cell(text: str) -> str:
    """`_code(text)` in a table's cell: each `|` escaped, which GitHub's tables require even
    inside a code span (the escape is not shown; in a list item it would be)."""
    return _code(text).replace("|", "\\|")


def report(
    stack: str,
    events: Iterable[auto.EngineEvent],
    ignore_changes: Mapping[str, Sequence[str]],
) -> DriftReport:
    """The drift a refresh preview's engine events show. `ignore_changes` maps a URN to the
    `ignoreChanges` paths the program gave that resource (from the state)."""
    resources: list[Resource] = []
    for event in events:
        outputs_event = event.res_outputs_event
        if outputs_event is None:
            continue
        step = outputs_event.metadata
        change = DRIFT_OPS.get(str(step.op.value))
        if change is None:
            continue
        rules = [(rule, parse_path(rule)) for rule in ignore_changes.get(step.urn, ())]
        properties: list[Property] = []
        if change != "deleted":
            changed = _changed_properties(step)
            named = [*(step.detailed_diff or {}), *(step.diffs or [])]
            if not changed and all(path.startswith("__inputs") for path in named):
                continue  # only the engine's bookkeeping moved
            for found in changed:
                ignored_by = next((text for text, keys in rules if covers(keys, found.keys)), None)
                properties.append(
                    Property(found.path, render(found.old), render(found.new), ignored_by)
                )
        resources.append(Resource(step.urn, change, tuple(properties)))
    return DriftReport(stack, tuple(sorted(resources, key=lambda r: r.urn)))


def _changed_properties(step: auto.StepEventMetadata) -> list[Change]:
    """The properties that moved: the provider's own detailed diff when it gave one (its paths
    are what it compares, so server-set fields are no noise), else the top-level keys it named,
    else every output that differs."""
    # `__inputs`: the engine's record of what a read resource was read with, which a refresh
    # never reproduces: bookkeeping, not a property of the live object.
    old = _without_bookkeeping(step.old.outputs if step.old else None)
    new = _without_bookkeeping(step.new.outputs if step.new else None)
    if step.detailed_diff:
        found = []
        for path in sorted(step.detailed_diff):
            if path.startswith("__inputs"):
                continue
            keys = parse_path(path)
            found.append(Change(keys, _lookup(old, keys), _lookup(new, keys)))
        return found
    if step.diffs:
        found = []
        for key in sorted(step.diffs):
            if key.startswith("__inputs"):
                continue
            found += property_changes(_lookup(old, [key]), _lookup(new, [key]), (key,))
        return found
    return property_changes(dict(old or {}), dict(new or {}))


def _without_bookkeeping(outputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if outputs is None:
        return None
    return {key: value for key, value in outputs.items() if key != "__inputs"}


def ignore_changes_of(exported: Mapping[str, Any]) -> dict[str, list[str]]:
    """URN -> the `ignoreChanges` paths of each resource in an exported state."""
    resources = tools.stack.exported_resources(exported)
    return {r["urn"]: list(r["ignoreChanges"]) for r in resources if r.get("ignoreChanges")}


class _SelectionKeepingWorkspace(auto.LocalWorkspace):
    """A LocalWorkspace that leaves the operator's selected stack as it is. `Stack.select` runs
    `pulumi stack select`, which the CLI keeps for the project: after a check of prod, a bare
    `pulumi up` or `pulumi destroy` would act on prod. No command needs the selection (a Stack
    names itself with `--stack` in each), so selecting here only finds the stack, as the
    Automation API's remote workspaces do: `pulumi stack --show-name --stack NAME` fails when
    there is no such stack, else prints its name and changes nothing."""

    def select_stack(self, stack_name: str) -> None:
        self.pulumi_command.run(
            ["stack", "--show-name", "--stack", stack_name], self.work_dir, self.env_vars
        )


def check(stack: str, *, work_dir: Path | None = None, pulumi: str | None = None) -> DriftReport:
    """Preview a refresh of `stack` and report its drift. `pulumi` is the CLI to run (default:
    $PULUMI, else `pulumi` on PATH) in `work_dir` (default: the current directory); the backend
    and passphrase come from the environment."""
    try:
        cli = pulumi_cli.automation_command(pulumi)
    except pulumi_cli.PulumiCliError as error:
        raise DriftCheckError(str(error)) from error
    folder = work_dir or Path.cwd()
    workspace = _SelectionKeepingWorkspace(work_dir=str(folder), pulumi_command=cli)
    events: list[auto.EngineEvent] = []
    try:
        checked = auto.Stack.select(stack, workspace)
        ignored = recorded_ignore_changes(stack, work_dir=folder, pulumi=pulumi)
        # Secrets stay ciphertext in the events: the report ends up in a GitHub issue.
        checked.preview_refresh(on_event=events.append, show_secrets=False, color="never")
    except auto.CommandError as error:
        raise DriftCheckError(_cli_said(error)) from error
    return report(stack, events, ignored)


# How the Automation API spells a failed command (its CommandResult): the status, then what the
# CLI printed on each stream, over several lines.
_COMMAND_RESULT: Final = re.compile(r"\s*code: (-?\d+)\n stdout: (.*)\n stderr: (.*)", re.DOTALL)


def _cli_said(error: auto.CommandError) -> str:
    """A failed CLI command as one line: its status and what it said (its error lines, else its
    last line), rather than the Automation API's code/stdout/stderr layout."""
    text = str(error)
    spelled = _COMMAND_RESULT.fullmatch(text)
    if spelled is None:
        return " ".join(text.split())
    code, stdout, stderr = spelled.groups()
    lines = [line.strip() for line in f"{stdout}\n{stderr}".splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("error:")] or lines[-1:] or ["nothing"]
    return f"the Pulumi CLI exited {code}: {' '.join(said)}"


def recorded_ignore_changes(
    stack: str, *, work_dir: Path, pulumi: str | None = None
) -> dict[str, list[str]]:
    """The `ignoreChanges` the state of `stack` records, by URN: read from `pulumi stack export`
    with its secrets left encrypted. (The Automation API's `export_stack` asks for them in the
    clear, and this check needs none of them.)"""
    try:
        exported = tools.stack.pulumi(
            "stack", "export", stack=stack, timeout=EXPORT_TIMEOUT, binary=pulumi, cwd=work_dir
        )
    except tools.stack.StackError as error:
        raise DriftCheckError(str(error)) from error
    return ignore_changes_of(json.loads(exported))


class DriftCheckError(Exception):
    """The refresh preview could not run (no such stack, no credentials, an unreachable API)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--markdown", type=Path, help="also write the report here as Markdown")
    args = parser.parse_args(argv)
    try:
        result = check(args.stack)
    except DriftCheckError as error:
        print(f"drift check of stack {args.stack} could not run: {error}", file=sys.stderr)
        return EXIT_ERROR
    print(result.text())
    if args.markdown:
        args.markdown.write_text(result.markdown())
    return EXIT_CLEAN if result.clean else EXIT_DRIFT


if __name__ == "__main__":
    raise SystemExit(main())
