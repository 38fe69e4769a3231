"""tools/drift.py: the report a refresh preview's engine events make, and the whole check (and
`make drift`) against a stand-in Pulumi CLI.

The events are Pulumi's engine-event JSON (`EngineEvent.from_json`, the shape the Automation API
receives) with the values a real `pulumi refresh --preview-only` of CLI 3.274 gave for a resource
changed out of band, one deleted and one whose changed property the program ignores; the
detailed-diff event is built from the documented `detailedDiff` shape (the provider's own paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from harness.make import make_env, run_make
from tests.stand_ins import PULUMI_CALLS, logged_calls, pulumi_stand_in
from tools.drift import (
    DriftCheckError,
    check,
    covers,
    format_path,
    ignore_changes_of,
    parse_path,
    recorded_ignore_changes,
    report,
)

PREFIX = "urn:pulumi:prod::mlstack::mlstack:app:Microservice$kubernetes:apps/v1:Deployment::"
GATEWAY = PREFIX + "gateway"
MODEL = PREFIX + "model"
CONFIG = "urn:pulumi:prod::mlstack::kubernetes:core/v1:ConfigMap::gateway-config"
SECRET = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "x"}
# The same key marks an asset, with the asset signature: no secret.
ASSET = {"4dabf18193072939515e22adb298388d": "c44067f5952c0a294b673a41bacd8c17", "path": "a.txt"}


def outputs_event_json(urn: str, op: str, old: dict[str, Any], new: dict[str, Any] | None,
                       **diff: Any) -> dict[str, Any]:  # fmt: skip
    """The engine's event, as JSON, that the refresh of `urn` ended with `op`."""

    def state(outputs: dict[str, Any]) -> dict[str, Any]:
        return {"type": urn.rsplit("::", 2)[1], "urn": urn, "id": "x", "parent": "",
                "provider": "", "inputs": {}, "outputs": outputs}  # fmt: skip

    metadata: dict[str, Any] = {"op": op, "urn": urn, "type": "t", "provider": "", **diff}
    metadata["old"] = state(old)
    if new is not None:
        metadata["new"] = state(new)
    return {"sequence": 1, "timestamp": 1, "resOutputsEvent": {"metadata": metadata}}


def outputs_event(urn: str, op: str, old: dict[str, Any], new: dict[str, Any] | None,
                  **diff: Any) -> auto.EngineEvent:  # fmt: skip
    return auto.EngineEvent.from_json(outputs_event_json(urn, op, old, new, **diff))


def pre_event(urn: str) -> auto.EngineEvent:
    """What the engine sends before it reads a resource: never a verdict on its own."""
    return auto.EngineEvent.from_json(
        {"sequence": 0, "timestamp": 0, "resourcePreEvent": {"metadata": {
            "op": "refresh", "urn": urn, "type": "t", "provider": ""}}}
    )  # fmt: skip


def deployment(replicas: int, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "gateway", "annotations": annotations or {}, "resourceVersion": "1"},
        "spec": {"replicas": replicas},
    }


def test_a_clean_refresh_is_no_drift() -> None:
    events = [pre_event(GATEWAY), outputs_event(GATEWAY, "same", deployment(2), deployment(2))]
    result = report("prod", events, {})
    assert result.clean
    assert result.text() == "No drift on stack prod: the live resources match the state."


def test_an_out_of_band_scale_and_annotation_name_the_resource_and_the_properties() -> None:
    live = deployment(1, {"kubectl.kubernetes.io/restartedAt": "now"})
    result = report("prod", [outputs_event(GATEWAY, "update", deployment(2), live)], {})
    assert not result.clean
    assert result.text().splitlines() == [
        "Drift on stack prod: 1 resource differs from the state.",
        "  kubernetes:apps/v1:Deployment gateway: changed",
        '    metadata.annotations["kubectl.kubernetes.io/restartedAt"]: (none) => "now"',
        "    spec.replicas: 2 => 1",
    ]


def test_the_provider_s_detailed_diff_chooses_the_properties() -> None:
    """A Kubernetes object's status and resourceVersion move all the time: where the provider
    named the paths it compared, those are the drift."""
    old = {**deployment(3), "status": {"replicas": 3}}
    new = {**deployment(1), "status": {"replicas": 1}}
    new["metadata"]["resourceVersion"] = "2"
    event = outputs_event(
        GATEWAY, "update", old, new,
        diffs=["spec"], detailedDiff={"spec.replicas": {"diffKind": "update", "inputDiff": True}},
    )  # fmt: skip
    (resource,) = report("prod", [event], {}).drifted
    assert [(p.path, p.old, p.new) for p in resource.drifted] == [("spec.replicas", "3", "1")]


API_SERVER = "urn:pulumi:prod::mlstack::kubernetes:discovery.k8s.io/v1:EndpointSlice::api-server"


def test_a_read_resource_whose_live_object_is_unchanged_is_no_drift() -> None:
    """The program reads the API server's EndpointSlice; a refresh drops the `__inputs` the
    engine recorded with the read, which is no change of the live object."""
    live = {"endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 6443}]}
    old = {**live, "__inputs": {"endpoints": live["endpoints"], "ports": live["ports"]}}
    bookkeeping = {"__inputs.ports": {"diffKind": "update"}}
    for diff in ({}, {"diffs": ["__inputs"]}, {"detailedDiff": bookkeeping}):
        event = outputs_event(API_SERVER, "update", old, live, **diff)
        assert report("prod", [event], {}).clean, diff
    moved = {**live, "endpoints": [{"addresses": ["10.0.0.2"]}]}
    (resource,) = report("prod", [outputs_event(API_SERVER, "update", old, moved)], {}).drifted
    assert [p.path for p in resource.drifted] == ["endpoints[0].addresses[0]"]


def test_a_deleted_resource_is_drift_whatever_the_program_ignores() -> None:
    event = outputs_event(CONFIG, "delete", {"data": {"k": "v"}}, None)
    result = report("prod", [event], {CONFIG: ["data"]})
    assert "  kubernetes:core/v1:ConfigMap gateway-config: deleted" in result.text()
    assert "| `kubernetes:core/v1:ConfigMap` `gateway-config` | (deleted) | | |" in (
        result.markdown()
    )


def test_a_replica_count_the_program_leaves_to_an_autoscaler_is_listed_and_not_drift() -> None:
    event = outputs_event(MODEL, "update", {"spec": {"replicas": 2}}, {"spec": {"replicas": 5}})
    result = report("prod", [event], {MODEL: ["spec.replicas"]})
    assert result.clean
    assert result.text().splitlines()[1:] == [
        "Not drift (the program's ignoreChanges):",
        "  kubernetes:apps/v1:Deployment model spec.replicas: 2 => 5 (ignoreChanges spec.replicas)",
    ]


def test_without_the_program_s_ignore_changes_the_same_scale_is_drift() -> None:
    event = outputs_event(MODEL, "update", {"spec": {"replicas": 2}}, {"spec": {"replicas": 5}})
    assert not report("prod", [event], {GATEWAY: ["spec.replicas"]}).clean


def test_an_ignored_property_does_not_hide_another_that_moved() -> None:
    old = {"spec": {"replicas": 2, "paused": False}}
    new = {"spec": {"replicas": 5, "paused": True}}
    result = report("prod", [outputs_event(MODEL, "update", old, new)], {MODEL: ["spec.replicas"]})
    (resource,) = result.drifted
    assert [p.path for p in resource.drifted] == ["spec.paused"]
    assert [p.path for _, p in result.ignored] == ["spec.replicas"]


# A secret and an asset are both objects under Pulumi's signature key: only the secret is hidden.
@pytest.mark.parametrize(
    ("urn", "old", "new", "shown", "hidden"),
    [
        ("urn:pulumi:prod::mlstack::kubernetes:core/v1:Secret::api-keys",
         {"data": SECRET}, {"data": {**SECRET, "ciphertext": "y"}},
         "data: [secret] => [secret]", "ciphertext"),
        ("urn:pulumi:prod::mlstack::aws:s3/bucketObjectv2:BucketObjectv2::model",
         {"source": ASSET}, {"source": {**ASSET, "path": "b.txt"}},
         '    source.path: "a.txt" => "b.txt"', "[secret]"),
    ],
    ids=["a secret stays secret", "an asset is shown"],
)  # fmt: skip
def test_signed_values_in_the_report(
    urn: str, old: dict[str, Any], new: dict[str, Any], shown: str, hidden: str
) -> None:
    text = report("prod", [outputs_event(urn, "update", old, new)], {}).text()
    assert shown in text
    assert hidden not in text


@pytest.mark.parametrize("data", [SECRET, "[secret]"], ids=["encrypted", "as events show it"])
def test_a_key_the_provider_names_inside_a_secret_is_shown_as_a_secret(data: Any) -> None:
    """The provider's detailed diff names the key of a Secret's `data` that moved out of band,
    while the outputs hold the whole `data` as one secret: the key's values are secret, not
    missing (a real refresh preview showed `data.api-key: (none) => (none)`)."""
    urn = "urn:pulumi:prod::mlstack::kubernetes:core/v1:Secret::gateway"
    changed = {"data.api-key": {"diffKind": "update", "inputDiff": True}}
    event = outputs_event(urn, "update", {"data": data}, {"data": data}, detailedDiff=changed)
    result = report("prod", [event], {})
    assert "    data.api-key: [secret] => [secret]" in result.text()
    assert "| `data.api-key` | `[secret]` | `[secret]` |" in result.markdown()


def test_the_markdown_names_each_property_with_both_values() -> None:
    result = report("prod", [outputs_event(GATEWAY, "update", deployment(2), deployment(1))], {})
    assert "| `kubernetes:apps/v1:Deployment` `gateway` | `spec.replicas` | `2` | `1` |" in (
        result.markdown()
    )


CONFIG_ROW = "| `kubernetes:core/v1:ConfigMap` `gateway-config` | `data.config` |"


def test_a_multi_line_value_keeps_its_property_on_one_line_of_the_report_and_the_table() -> None:
    """A ConfigMap's file edited out of band: each value shows its line breaks as `\\n`, so the
    property's line of the report, and its row of the issue's table, stays one line."""
    old, new = {"data": {"config": "a: 1\nb: 2\n"}}, {"data": {"config": "a: 1\nb: 3\n"}}
    result = report("prod", [outputs_event(CONFIG, "update", old, new)], {})
    assert result.text().splitlines()[1:] == [
        "  kubernetes:core/v1:ConfigMap gateway-config: changed",
        r'    data.config: "a: 1\nb: 2\n" => "a: 1\nb: 3\n"',
    ]
    assert result.markdown().splitlines()[2:] == [
        "| resource | property | in the state | live |",
        "| --- | --- | --- | --- |",
        CONFIG_ROW + r' `"a: 1\nb: 2\n"` | `"a: 1\nb: 3\n"` |',
    ]


# Each value as the report shows it, then as the table's cell does: a character that would move
# the rest of the line (or hide in it) as its escape, a backslash of the value's own doubled, and
# in the cell a `|` escaped, as GitHub's tables require even inside a code span.
@pytest.mark.parametrize(
    ("value", "shown", "cell"),
    [
        ("a\tb", r'"a\tb"', r'`"a\tb"`'),
        ("a\r\nb", r'"a\r\nb"', r'`"a\r\nb"`'),
        ("\x1b[31mred\x1b[0m", r'"\x1b[31mred\x1b[0m"', r'`"\x1b[31mred\x1b[0m"`'),
        ("a\x0bb\x0cc\x85d\u2028e", r'"a\x0bb\x0cc\x85d\u2028e"', r'`"a\x0bb\x0cc\x85d\u2028e"`'),
        ('say "hi" \\n', r'"say \"hi\" \\n"', r'`"say \"hi\" \\n"`'),
        ("a | b\nc", r'"a | b\nc"', r'`"a \| b\nc"`'),
        ({"k": "a|b\nc"}, r"{'k': 'a|b\nc'}", r"`{'k': 'a\|b\nc'}`"),
    ],
    ids=["tab", "CRLF", "escape", "other breaks", "quotes and backslash", "pipe", "nested"],
)
def test_a_value_s_control_characters_show_as_escapes(value: Any, shown: str, cell: str) -> None:
    old, new = {"data": {"config": "x"}}, {"data": {"config": value}}
    result = report("prod", [outputs_event(CONFIG, "update", old, new)], {})
    assert result.text().splitlines()[2:] == [f'    data.config: "x" => {shown}']
    assert result.markdown().splitlines()[4:] == [f'{CONFIG_ROW} `"x"` | {cell} |']


def test_an_ignored_value_shows_on_its_one_line_of_the_list_its_pipes_as_they_are() -> None:
    """The properties the program ignores are a list, not a table: a `|` there needs no escape
    (GitHub would show it), a line break still does."""
    old, new = {"data": {"config": "x"}}, {"data": {"config": "a | b\nc"}}
    result = report("prod", [outputs_event(CONFIG, "update", old, new)], {CONFIG: ["data"]})
    assert result.markdown().splitlines()[-1] == (
        r'- `kubernetes:core/v1:ConfigMap` `gateway-config` `data.config`: `"x"` => `"a | b\nc"`'
        " (ignoreChanges `data`)"
    )


def test_ignore_changes_are_read_from_the_exported_state() -> None:
    state = {"resources": [{"urn": MODEL, "ignoreChanges": ["spec.replicas"]}, {"urn": GATEWAY}]}
    exported = {"version": 3, "deployment": state}
    assert ignore_changes_of(exported) == {MODEL: ["spec.replicas"]}
    # The deployment alone is a caller's mistake, not a state with nothing ignored.
    with pytest.raises(ValueError, match="stack export"):
        ignore_changes_of(state)


# A `pulumi stack export` that holds a secret output as the CLI prints it without
# `--show-secrets`, and refuses to print it in the clear.
EXPORT_ANSWERS = f"""\
if args[1:3] == ["stack", "export"]:
    if "--show-secrets" in args:
        sys.exit("stand-in: the check asked for the state's secrets in the clear")
    resources = [
        {{"urn": {MODEL!r}, "ignoreChanges": ["spec.replicas"]}},
        {{"urn": "urn:x", "outputs": {{"data": {SECRET!r}}}}},
    ]
    print(json.dumps({{"version": 3, "deployment": {{"resources": resources}}}}))
else:
    sys.exit("stand-in: no such stack")
"""


def test_the_check_reads_ignore_changes_with_the_state_s_secrets_encrypted(
    tmp_path: Path,
) -> None:
    binary = pulumi_stand_in(tmp_path, EXPORT_ANSWERS)
    ignored = recorded_ignore_changes("prod", work_dir=tmp_path, pulumi=str(binary))
    assert ignored == {MODEL: ["spec.replicas"]}
    (call,) = logged_calls(tmp_path / PULUMI_CALLS)
    assert call["args"] == ["--non-interactive", "stack", "export", "--stack", "prod"]


def test_an_export_that_fails_stops_the_check_with_what_the_cli_said(tmp_path: Path) -> None:
    binary = pulumi_stand_in(tmp_path, "sys.exit(\"error: no stack named 'prod' found\")")
    with pytest.raises(DriftCheckError, match="exited 1: error: no stack named 'prod' found"):
        recorded_ignore_changes("prod", work_dir=tmp_path, pulumi=str(binary))


# The CLI the whole check runs, on a backend that holds `prod` alone: the stack the project has
# selected in the file `selected` beside it (none when absent), which `stack select` and
# `stack unselect` change as the CLI's workspace does; a command that names no stack fails, as
# one on a stack the backend lacks. Its version is one that hands the Automation API its engine
# events through a file (--event-log): the lines of `events.jsonl` beside it.
CHECK_ANSWERS = """\
words = [word for word in args if word != "--non-interactive"]
named = words[words.index("--stack") + 1] if "--stack" in words else None
selected = here / "selected"
if words == ["version"]:
    print("v3.200.0")
elif words[:2] == ["stack", "unselect"]:
    selected.unlink(missing_ok=True)
elif named != "prod" and words[:2] != ["stack", "select"]:
    sys.exit(f"error: no stack named '{named}' found" if named else "stand-in: which stack?")
elif words[:2] == ["stack", "select"]:
    chosen = named or words[2]
    if chosen != "prod":
        sys.exit(f"error: no stack named '{chosen}' found")
    selected.write_text(chosen)
elif words[:2] == ["stack", "--show-name"]:
    print(named)
elif words[:2] == ["stack", "export"]:
    print(json.dumps({"version": 3, "deployment": {"resources": []}}))
elif words[:2] == ["refresh", "--preview-only"]:
    with open(words[words.index("--event-log") + 1], "a") as log:
        log.write((here / "events.jsonl").read_text())
else:
    sys.exit("stand-in: unexpected " + " ".join(words))
"""
# What the engine sends last: its summary, then the end of the stream.
SUMMARY = {"sequence": 2, "timestamp": 2, "summaryEvent": {"resourceChanges": {"update": 1}}}
CANCEL = {"sequence": 3, "timestamp": 3, "cancelEvent": {}}


def check_cli(folder: Path, selected: str | None) -> Path:
    """The stand-in CLI the check runs, at `<folder>/bin/pulumi` (the layout the Automation API
    runs), with `selected` the project's selected stack; its refresh finds the gateway scaled
    from 2 to 3."""
    binary = pulumi_stand_in(folder / "bin", CHECK_ANSWERS)
    scaled = outputs_event_json(GATEWAY, "update", deployment(2), deployment(3))
    events = "".join(json.dumps(event) + "\n" for event in (scaled, SUMMARY, CANCEL))
    (folder / "bin" / "events.jsonl").write_text(events)
    if selected is not None:
        (folder / "bin" / "selected").write_text(selected)
    return binary


def selection(binary: Path) -> str | None:
    """The stack the stand-in CLI's project has selected (None: none)."""
    path = binary.with_name("selected")
    return path.read_text() if path.exists() else None


def assert_every_command_named_prod(binary: Path) -> None:
    calls = [call["args"] for call in logged_calls(binary.with_name(PULUMI_CALLS))]
    commands = [args for args in calls if args != ["version"]]
    assert [args[1] for args in commands] == ["stack", "stack", "refresh"], commands
    for args in commands:
        assert args[args.index("--stack") :][:2] == ["--stack", "prod"], args


@pytest.mark.parametrize("before", ["dev", None], ids=["dev selected", "none selected"])
def test_the_check_leaves_the_stack_the_operator_selected_as_it_was(
    before: str | None, tmp_path: Path
) -> None:
    binary = check_cli(tmp_path, before)
    result = check("prod", work_dir=tmp_path, pulumi=str(binary))
    assert result.text().splitlines()[-1] == "    spec.replicas: 2 => 3"
    assert selection(binary) == before
    assert_every_command_named_prod(binary)


def test_make_drift_leaves_the_stack_the_operator_selected_as_it_was(tmp_path: Path) -> None:
    binary = check_cli(tmp_path, "dev")
    # No backend or passphrase of whoever runs the tests reaches this run; prod, which has no
    # local fallback, gets one of the test's.
    env = make_env("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")
    env["PULUMI_BACKEND_URL"] = f"file://{tmp_path}/state"
    result = run_make("drift", "STACK=prod", f"PULUMI={binary}", env=env)
    # The tool exits 1 on drift; make's own status is 2 for any recipe that fails (README, "Drift").
    assert result.returncode == 2, result.stdout
    assert "Drift on stack prod: 1 resource differs from the state." in result.stdout
    assert selection(binary) == "dev"
    assert_every_command_named_prod(binary)


def test_a_stack_the_backend_lacks_stops_the_check_at_once_with_the_cli_s_error(
    tmp_path: Path,
) -> None:
    binary = check_cli(tmp_path, "dev")
    with pytest.raises(DriftCheckError) as refused:
        check("staging", work_dir=tmp_path, pulumi=str(binary))
    # One line, as `make drift` prints it, not the Automation API's code/stdout/stderr layout.
    assert str(refused.value) == "the Pulumi CLI exited 1: error: no stack named 'staging' found"
    calls = [call["args"] for call in logged_calls(binary.with_name(PULUMI_CALLS))]
    assert calls == [
        ["version"],
        ["--non-interactive", "stack", "--show-name", "--stack", "staging"],
    ]


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("spec.replicas", ("spec", "replicas")),
        ('metadata.annotations["a.b/c"]', ("metadata", "annotations", "a.b/c")),
        ("spec.template.spec.containers[0].image",
         ("spec", "template", "spec", "containers", 0, "image")),
        ('data["say \\"hi\\""]', ("data", 'say "hi"')),
    ],
)  # fmt: skip
def test_property_paths_read_and_print_as_pulumi_writes_them(
    path: str, keys: tuple[str | int, ...]
) -> None:
    assert parse_path(path) == keys
    assert format_path(keys) == path


def test_an_ignore_changes_rule_covers_the_property_and_what_is_under_it() -> None:
    assert covers(parse_path("spec.replicas"), parse_path("spec.replicas"))
    assert covers(parse_path("spec"), parse_path("spec.replicas"))
    assert covers(parse_path("spec.containers[*].image"), parse_path("spec.containers[1].image"))
    assert not covers(parse_path("spec.replicas"), parse_path("spec.paused"))
    assert not covers(parse_path("spec.replicas"), parse_path("spec"))
