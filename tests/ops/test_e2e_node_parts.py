"""The real e2e node's pure parts: the image archive writer, the LoadBalancer address mirror,
the DNS readiness query, the Debian package list, the configuration templates, the mount
table's reader, the preflight checks that refuse a second node, and the kernel settings, chains
and ipsets `down` puts back or removes (the node itself runs in `make e2e`)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import tarfile
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

import e2e.node as node_module
from e2e import addresses, images, process
from e2e.controlplane import ControlPlane
from e2e.image_archive import ImageFile, write_image
from e2e.node import Node, containerd, guard, host, kube_proxy, kubelet, network, rules
from e2e.node.dns import dns_query
from e2e.node.layout import Layout
from e2e.node.packages import debian_packages
from e2e.render import render, render_json
from harness.program import ROOT

STAGE = ROOT / "e2e" / "stages" / "service-load-balancer.yaml"


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    f = tar.extractfile(name)
    assert f is not None
    return f.read()


def _write_probe(dest: Path) -> str:
    """A one-file probe image, written to `dest`; its manifest's digest."""
    return write_image(
        dest,
        "mlstack.local/e2e/probe:1",
        [ImageFile("/e2e-probe", b"\x7fELF...")],
        entrypoint=["/e2e-probe"],
        cmd=["serve", ":8080"],
    )


def test_image_archive_is_a_consistent_oci_layout_and_docker_archive(tmp_path: Path) -> None:
    dest = tmp_path / "probe.tar"
    digest = _write_probe(dest)
    with tarfile.open(dest) as tar:
        index = json.loads(_member(tar, "index.json"))
        [entry] = index["manifests"]
        assert entry["digest"] == digest
        assert entry["annotations"]["io.containerd.image.name"] == "mlstack.local/e2e/probe:1"
        manifest_bytes = _member(tar, "blobs/sha256/" + digest.split(":")[1])
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
        manifest = json.loads(manifest_bytes)
        config = json.loads(_member(tar, "blobs/sha256/" + manifest["config"]["digest"][7:]))
        layer_digest = manifest["layers"][0]["digest"]
        layer = _member(tar, "blobs/sha256/" + layer_digest[7:])
        assert config["rootfs"]["diff_ids"] == [layer_digest]
        assert config["config"]["Entrypoint"] == ["/e2e-probe"]
        assert config["config"]["User"] == "65532:65532"
        [docker] = json.loads(_member(tar, "manifest.json"))
        assert docker["RepoTags"] == ["mlstack.local/e2e/probe:1"]
        assert set(docker["Layers"]) | {docker["Config"]} <= set(tar.getnames())
    with tarfile.open(fileobj=io.BytesIO(layer)) as files:
        info = files.getmember("e2e-probe")
        assert info.mode == 0o755 and info.mtime == 0
    # Written again, the same image has the same digest.
    assert _write_probe(tmp_path / "again.tar") == digest


def test_the_stage_template_mirrors_cluster_ips_like_load_balancer_ip() -> None:
    template = re.search(
        r'printf "([0-9.]+)%s" \(trimPrefix "([0-9.]+)" \.spec\.clusterIP\)', STAGE.read_text()
    )
    assert template is not None
    lb_prefix, service_prefix = template.groups()
    assert addresses.SERVICE_CIDR.startswith(service_prefix)
    assert addresses.LOAD_BALANCER_CIDR.startswith(lb_prefix)
    for cluster_ip in ("10.96.0.1", "10.96.3.200", "10.96.255.7"):
        mirrored = lb_prefix + cluster_ip.removeprefix(service_prefix)
        assert mirrored == addresses.load_balancer_ip(cluster_ip)
    with pytest.raises(ValueError):
        addresses.load_balancer_ip("192.0.2.10")


def _serve_once(sock: socket.socket, answers: list[str], rcode: int) -> None:
    query, peer = sock.recvfrom(512)
    qid = query[:2]
    question = query[12:]
    header = qid + struct.pack(">HHHHH", 0x8180 | rcode, 1, len(answers), 0, 0)
    records = b"".join(
        struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(a) for a in answers
    )
    sock.sendto(header + question + records, peer)


@pytest.mark.parametrize(
    ("answers", "rcode", "expected"),
    [(["10.96.0.1"], 0, ["10.96.0.1"]), (["10.96.0.7", "10.96.0.8"], 0, ["10.96.0.7", "10.96.0.8"]),
     ([], 3, [])],
)  # fmt: skip
def test_dns_query_reads_a_records(answers: list[str], rcode: int, expected: list[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        thread = threading.Thread(target=_serve_once, args=(server, answers, rcode))
        thread.start()
        found = dns_query(
            "127.0.0.1", "kubernetes.default.svc.cluster.local", port=server.getsockname()[1]
        )
        thread.join()
    assert found == expected


def test_debian_packages_name_the_node_runtime() -> None:
    packages = debian_packages()
    assert {"containerd", "runc", "containernetworking-plugins", "conntrack", "nftables"} <= set(
        packages
    )
    assert all(" " not in p and not p.startswith("#") for p in packages)


def test_every_command_the_images_need_comes_from_a_listed_package() -> None:
    assert set(images.COMMANDS.values()) == set(images.APT_PACKAGES)


def test_the_node_s_config_templates_render_whole(tmp_path: Path) -> None:
    """Every value of the node's configuration files is filled in and each parses as what it
    is: containerd's TOML, the CNI network, kubelet's, kube-proxy's and a kubeconfig as JSON."""
    layout = Layout(tmp_path / "node")
    (layout.cni / "net.d").mkdir(parents=True)
    layout.pki.mkdir(parents=True)
    config = tomllib.loads(containerd.write_config(layout, ["127.0.0.1:5000"]).read_text())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert config["grpc"]["address"] == str(layout.containerd_socket)
    assert cri["cni"]["conf_dir"] == str(layout.cni / "net.d")
    hosts = layout.containerd / "certs.d" / "127.0.0.1:5000" / "hosts.toml"
    assert tomllib.loads(hosts.read_text())["server"] == "http://127.0.0.1:5000"
    conflist = json.loads(
        (layout.cni / "net.d" / f"10-{addresses.CNI_NETWORK}.conflist").read_text()
    )
    assert conflist["plugins"][0]["ipam"]["ranges"] == [
        [{"subnet": addresses.POD_CIDR, "gateway": addresses.POD_GATEWAY}]
    ]
    kubelet_config = json.loads(kubelet.write_config(layout, tmp_path / "ca").read_text())
    assert kubelet_config["port"] == kubelet.PORT
    assert kubelet_config["clusterDNS"] == [addresses.DNS_SERVICE_IP]
    proxy = json.loads(kube_proxy.write_config(layout, "n").read_text())
    assert proxy["nodePortAddresses"] == [f"{addresses.NODE_ADDRESS}/32"]
    assert render_json(
        "kubeconfig.json", server="s", certificate_authority="a", user="u", client_certificate="c",
        client_key="k",
    ).endswith("}")  # fmt: skip
    ruleset = guard.ruleset(["eth0"])
    assert ruleset.startswith(f"table inet {guard.TABLE} {{\n") and ruleset.endswith("}\n")
    assert "$" not in ruleset + render("Corefile", domain=addresses.CLUSTER_DOMAIN)


def test_a_path_in_the_workdir_follows_each_instance_and_is_no_field() -> None:
    first, second = Layout(Path("/srv/a")), Layout(Path("/srv/b"))
    assert first.containerd_socket == Path("/srv/a/containerd/containerd.sock")
    assert second.state_file == Path("/srv/b/state.json")
    assert [field.name for field in dataclasses.fields(Layout)] == ["workdir"]


def test_the_mount_table_reader_decodes_points_and_skips_optional_fields(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 master:2 - cgroup2 cgroup2 rw\n"
        "41 22 0:40 / /srv/e2e\\040dir/pods\\134x rw - tmpfs tmpfs rw\n"
    )
    assert process.mounts(mountinfo) == [
        process.Mount(Path("/"), "ext4"),
        process.Mount(Path("/sys/fs/cgroup"), "cgroup2"),
        process.Mount(Path("/srv/e2e dir/pods\\x"), "tmpfs"),
    ]


@pytest.mark.parametrize(
    ("bridge", "refusal"),
    [
        # The node's bridge is there: another node runs (here, one of the same folder).
        ("lo", "lo exists: another e2e node runs on this machine"),
        # Its folder's state.json is there: a node whose `down` has not finished.
        ("mlse2e-absent", "state.json exists: the node of this folder has not been removed"),
    ],
)
def test_a_node_refused_by_preflight_leaves_the_other_node_s_state_alone(
    bridge: str, refusal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(addresses, "NODE_BRIDGE", bridge)
    downs: list[bool] = []
    monkeypatch.setattr(Node, "down", lambda self, keep_logs=False: downs.append(keep_logs))
    node = Node(ControlPlane(bin_dir=tmp_path / "bin", workdir=tmp_path / "cluster"))
    node.layout.workdir.mkdir(parents=True)
    other = json.dumps({"pids": {"kubelet": 1}, "sysctls": {"net/ipv4/ip_forward": "0"}})
    node.layout.state_file.write_text(other)

    with pytest.raises(RuntimeError, match=refusal):
        node.up()

    assert downs == []
    assert node.layout.state_file.read_text() == other


@pytest.mark.parametrize(
    ("claimed", "chains", "refusal"),
    [
        # Another node made the bridge between the first look and the claim: nothing is made.
        (False, set(), "mlse2e-absent exists: another e2e node started on this machine"),
        # kube-proxy's chains are there (a Kubernetes node on the machine, say k3s): the e2e
        # node's kube-proxy would rewrite its Services' rules. The bridge claimed goes again.
        (True, {"iptables nat KUBE-SERVICES"},
         r"iptables has kube-proxy's chains \(iptables nat"),
    ],
    ids=["bridge-claimed-by-another", "another-kube-proxy"],
)  # fmt: skip
def test_a_node_refused_after_the_first_look_records_nothing_and_removes_nothing(
    claimed: bool,
    chains: set[str],
    refusal: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(addresses, "NODE_BRIDGE", "mlse2e-absent")
    monkeypatch.setattr(node_module, "ensure_packages", lambda: None)
    links = {"mlse2e-absent"}
    monkeypatch.setattr(network, "claim_node_bridge", lambda: claimed)
    monkeypatch.setattr(network, "release_node_bridge", links.clear)
    monkeypatch.setattr(rules, "our_chains", lambda: chains)
    downs: list[bool] = []
    monkeypatch.setattr(Node, "down", lambda self, keep_logs=False: downs.append(keep_logs))
    node = Node(ControlPlane(bin_dir=tmp_path / "bin", workdir=tmp_path / "cluster"))

    with pytest.raises(RuntimeError, match=refusal):
        node.up()

    assert downs == []
    assert not node.layout.state_file.exists()
    # The bridge this node made is removed; one another node made is not.
    assert bool(links) == (not claimed)


@pytest.mark.parametrize(
    ("now", "left", "after"),
    [
        ("1", {"net/ipv4/ip_forward": "1"}, "0"),  # as `up` left it: put back
        ("1", None, "0"),  # an `up` that did not finish: put back
        ("1", {"net/ipv4/ip_forward": "0"}, "1"),  # set since by another program: kept
        ("0", {"net/ipv4/ip_forward": "0"}, "0"),  # as it was: untouched
    ],
    ids=["set-by-up", "up-unfinished", "set-by-another", "unchanged"],
)
def test_down_puts_back_only_the_kernel_settings_the_node_changed(
    now: str,
    left: dict[str, str] | None,
    after: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host, "PROC_SYS", tmp_path)
    monkeypatch.setattr(process, "running", lambda comm: False)
    setting = tmp_path / "net" / "ipv4" / "ip_forward"
    setting.parent.mkdir(parents=True)
    setting.write_text(f"{now}\n")

    host.restore_sysctls({"net/ipv4/ip_forward": "0"}, left)

    assert setting.read_text().strip() == after


def test_down_destroys_only_the_new_ipsets_of_kube_router_s_naming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """firewalld's or fail2ban's ipsets, made while the node ran, are not the node's."""
    listed = ["f2b-sshd", "KUBE-SRC-OLD", "KUBE-SRC-NEW", "inet6:KUBE-DST-NEW", "kube-router-x"]
    destroyed: list[str] = []

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if argv[:2] == ("ipset", "destroy"):
            destroyed.append(argv[2])
        return subprocess.CompletedProcess(argv, 0, "\n".join(listed) + "\n", "")

    monkeypatch.setattr(rules, "run", run)

    rules.remove_ipsets({"KUBE-SRC-OLD"})

    assert sorted(destroyed) == ["KUBE-SRC-NEW", "inet6:KUBE-DST-NEW", "kube-router-x"]


# What the CNI firewall and portmap plugins leave while one pod of the node's (10.244.0.7) runs,
# with a host port, beside kubelet's chain.
NODE_FILTER: Final = """*filter
:FORWARD DROP [0:0]
:CNI-ADMIN - [0:0]
:CNI-FORWARD - [0:0]
:KUBE-FIREWALL - [0:0]
-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
-A CNI-FORWARD -d 10.244.0.7/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 10.244.0.7/32 -j ACCEPT
"""
NODE_NAT: Final = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-DN-1111 - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-DN-1111 -s 10.244.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-1111 -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-1111 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.244.0.7:80
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"mlse2e\\" id: \\"a1\\"" -m multiport --dports 8080 -j CNI-DN-1111
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
"""  # noqa: E501
# A nerdctl container (10.4.0.5 on CNI network "bridge") started while the node ran.
OTHER_FILTER: Final = """-A CNI-FORWARD -d 10.4.0.5/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 10.4.0.5/32 -j ACCEPT
"""  # noqa: E501
OTHER_NAT: Final = """:CNI-DN-2222 - [0:0]
-A CNI-DN-2222 -s 10.4.0.0/24 -p tcp -m tcp --dport 9090 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-2222 -p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.4.0.5:80
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"bridge\\" id: \\"b2\\"" -m multiport --dports 9090 -j CNI-DN-2222
"""  # noqa: E501


@pytest.mark.parametrize(
    ("other", "removed", "deleted"),
    [
        (False,
         {"filter": ["CNI-ADMIN", "CNI-FORWARD", "KUBE-FIREWALL"],
          "nat": ["CNI-DN-1111", "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"]},
         {"filter": ["FORWARD"], "nat": ["POSTROUTING", "PREROUTING"]}),
        # The shared chains stay, with the other's rules and jumps; the node's pods' go.
        (True,
         {"filter": ["KUBE-FIREWALL"], "nat": ["CNI-DN-1111"]},
         {"filter": ["CNI-FORWARD", "CNI-FORWARD"], "nat": ["CNI-HOSTPORT-DNAT"]}),
    ],
    ids=["the node alone", "beside another CNI user"],
)  # fmt: skip
def test_down_removes_the_cni_chains_another_cni_user_shares_only_when_it_is_gone(
    other: bool,
    removed: dict[str, list[str]],
    deleted: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = {
        "filter": NODE_FILTER + (OTHER_FILTER if other else ""),
        "nat": NODE_NAT + (OTHER_NAT if other else ""),
    }
    calls: dict[str, dict[str, list[str]]] = {"-X": {}, "-D": {}}

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if argv[0] == "iptables-save":
            return subprocess.CompletedProcess(argv, 0, saved.get(argv[2], ""), "")
        if argv[0] == "iptables" and argv[3] in calls:
            calls[argv[3]].setdefault(argv[2], []).append(argv[4])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(rules, "run", run)

    rules.remove_chains(set())

    assert {table: sorted(names) for table, names in calls["-X"].items()} == removed
    assert {table: sorted(chains) for table, chains in calls["-D"].items()} == deleted


class DownRecorder:
    """The machine as the node's `down` acts on it, recorded: each removal's name, in order; the
    node's links there until `remove_links`, unless `links_stay`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, links_stay: bool = False) -> None:
        self.done: list[str] = []
        self.links = list(network.LINKS)
        self.links_stay = links_stay
        for module, name in [
            (rules, "remove_chains"),
            (rules, "remove_ipsets"),
            (rules, "remove_nft_tables"),
            (host, "restore_sysctls"),
            (kubelet, "remove_cgroups"),
            (node_module.teardown, "remove_host_files"),
            (process, "unmount_under"),
        ]:
            monkeypatch.setattr(module, name, self.recorder(name))
        monkeypatch.setattr(guard, "remove", self.recorder("remove guard"))
        monkeypatch.setattr(network, "remove_links", self.remove_links)
        monkeypatch.setattr(network, "links_left", lambda: list(self.links))
        monkeypatch.setattr(Node, "leftovers", lambda node: [f"link {x}" for x in self.links])

    def recorder(self, name: str) -> Callable[..., None]:
        return lambda *args: self.done.append(name)

    def remove_links(self) -> None:
        self.done.append("remove links")
        if not self.links_stay:
            self.links.clear()


def a_node_to_take_down(tmp_path: Path) -> Node:
    node = Node(ControlPlane(bin_dir=tmp_path / "bin", workdir=tmp_path / "cluster"))
    node.layout.workdir.mkdir(parents=True)
    node.state.save({"pids": {}, "sysctls": {"net/ipv4/ip_forward": "0"}})
    node.s3.down = lambda: None  # type: ignore[method-assign]
    return node


def test_down_removes_the_egress_guard_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the links (the bridges, the pod and LoadBalancer routes) and the kernel settings:
    with the node bridge gone, a LoadBalancer address is routed out by the default route."""
    machine = DownRecorder(monkeypatch)
    node = a_node_to_take_down(tmp_path)

    assert node.down() == []

    assert machine.done[-1] == "remove guard"
    assert machine.done.index("remove links") < machine.done.index("restore_sysctls")
    assert not node.layout.workdir.exists()


def test_down_keeps_the_egress_guard_while_a_link_of_the_node_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = DownRecorder(monkeypatch, links_stay=True)
    node = a_node_to_take_down(tmp_path)

    left = node.down()

    assert "remove guard" not in machine.done
    assert left[0].startswith("remove guard: teardown failed: kept while these route traffic:")
    assert f"link {addresses.POD_BRIDGE}" in left[0]
    # Its record of the machine stays for the next `down`.
    assert node.layout.state_file.exists()
