"""The renderer: plain, stable manifests of exactly the Kubernetes objects, secrets withheld."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.program import TEST_SECRETS, run_program
from tests.manifests import container, pod_spec
from tests.policy.conftest import load
from tools import render


@pytest.fixture(scope="module")
def prod(rendered: Path) -> Path:
    return rendered / "prod"


def test_one_file_per_kubernetes_object_only(prod: Path) -> None:
    run = run_program("prod")
    expected = {
        f"{r.kind.lower()}-{r.metadata['name']}.yaml"
        for r in run.resources
        if r.type.startswith("kubernetes:") and not r.read
    }
    assert {p.name for p in prod.glob("*.yaml")} == expected
    # docker, gcp and the provider are not Kubernetes objects.
    assert any(not r.type.startswith("kubernetes:") for r in run.resources)
    # What the program reads from the cluster (the API server's EndpointSlice, the `kubernetes`
    # Service) is not its own.
    assert sorted(r.kind for r in run.resources if r.read) == ["EndpointSlice", "Service"]
    assert not list(prod.glob("endpointslice-*.yaml"))
    assert not list(prod.glob("service-kubernetes.yaml"))


def test_objects_are_plain_manifests_with_integers(prod: Path) -> None:
    gateway = load(prod, "deployment-gateway.yaml")
    assert list(gateway)[:3] == ["apiVersion", "kind", "metadata"]
    assert (gateway["apiVersion"], gateway["kind"]) == ("apps/v1", "Deployment")
    assert gateway["metadata"]["name"] == "gateway"
    assert gateway["metadata"]["namespace"] == "mlstack-prod"
    assert gateway["spec"]["replicas"] == 3
    port = container(gateway)["ports"][0]
    assert port["containerPort"] == 8080
    assert type(port["containerPort"]) is int
    policy_ = load(prod, "networkpolicy-database-from-gateway.yaml")
    assert type(policy_["spec"]["ingress"][0]["ports"][0]["port"]) is int


def test_secret_values_are_never_written(rendered: Path) -> None:
    for path in rendered.rglob("*.yaml"):
        text = path.read_text()
        for secret in TEST_SECRETS.values():
            assert secret not in text, path
    gateway = load(rendered / "prod", "secret-gateway.yaml")
    assert gateway["stringData"] == {
        "api-key": render.SECRET_PLACEHOLDER,
        "database-url": render.SECRET_PLACEHOLDER,
        "database-read-url": render.SECRET_PLACEHOLDER,
    }
    migrations = load(rendered / "prod", "secret-gateway-migrations.yaml")
    assert migrations["stringData"] == {"database-url": render.SECRET_PLACEHOLDER}
    database = load(rendered / "prod", "secret-database.yaml")
    assert database["stringData"] == dict.fromkeys(
        (
            "owner-password",
            "gateway-password",
            "replication-password",
            "rewind-password",
            # prod backs up: pgBackRest's encryption key.
            "backup-cipher-password",
        ),
        render.SECRET_PLACEHOLDER,
    )


def test_rendering_is_stable(prod: Path, tmp_path: Path) -> None:
    render.write(render.render("prod"), tmp_path)
    again = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    assert again == {p.name: p.read_text() for p in prod.glob("*.yaml")}


def test_write_replaces_stale_manifests(tmp_path: Path) -> None:
    (tmp_path / "deployment-gone.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gone\n"
    )
    written = render.write(render.render("dev"), tmp_path)
    assert sorted(tmp_path.glob("*.yaml")) == sorted(written)


def test_write_leaves_every_other_file_in_the_folder_as_it_was(tmp_path: Path) -> None:
    """`--out .` from the project's root, say: its stack files are no manifests of a render."""
    others = {
        "Pulumi.yaml": "name: mlstack\nruntime: python\n",
        "Pulumi.dev.yaml": "config:\n  mlstack:cluster: {provider: local}\n",
        # A manifest of someone's, under a name that is not its own kind and name.
        "gateway.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\n",
        "notes.yaml": "- [unclosed\n",
        "deployment-gone.yml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: gone}\n",
    }
    for name, text in others.items():
        (tmp_path / name).write_text(text)
    written = render.write(render.render("dev"), tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p not in written} == others


def test_built_images_are_deployed_by_digest_and_pulled_if_not_present(prod: Path) -> None:
    for name in ("deployment-gateway.yaml", "deployment-model.yaml", "statefulset-database.yaml"):
        spec = pod_spec(load(prod, name))
        for each in [*spec.get("initContainers", []), *spec["containers"]]:
            assert "@sha256:" in each["image"], name
            assert each["imagePullPolicy"] == "IfNotPresent", name


def test_cli_renders_one_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "namespace-mlstack-dev.yaml").exists()
    assert "dev: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        render.main(["--stack", "nope"])
