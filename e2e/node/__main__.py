"""A real node for the e2e cluster (e2e/node/), from the command line.

    python -m e2e.node up DIR      # join the control plane that `e2e.controlplane up DIR` started
    python -m e2e.node check DIR   # restricted pods Ready, Service + DNS, outside traffic refused
    python -m e2e.node down DIR    # remove every process, mount, rule, bridge and file it made
    python -m e2e.node packages    # the Debian packages of e2e/node-packages.txt still missing

`up DIR 127.0.0.1:PORT...` also lets containerd pull from those registries over plain HTTP.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from e2e.controlplane import ControlPlane, teardown_bin, toolchain_bin
from e2e.node import Node
from e2e.node.packages import missing_packages


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["packages"]:
        print(" ".join(missing_packages()))
        return 0
    if len(argv) < 2 or argv[0] not in ("up", "down", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    workdir = Path(argv[1]).resolve()
    # `down` never builds the toolchain (teardown_bin says why).
    bin_dir = teardown_bin(workdir) if argv[0] == "down" else toolchain_bin()
    plane = ControlPlane(bin_dir=bin_dir, workdir=workdir)
    node = Node(plane, registries=argv[2:])
    if argv[0] == "up":
        node.up()
        node.wait_for_metrics()
        print(json.dumps(node.timings))
    elif argv[0] == "check":
        print(json.dumps(node.check()))
    else:
        left = node.down()
        if left:
            print("\n".join(left), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
