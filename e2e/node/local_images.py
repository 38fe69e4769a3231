"""The images the node makes itself from the toolchain's binaries (one layer each, written by
e2e/image_archive.py and imported with `ctr`): the pod sandbox, the suite's probe and CoreDNS.
Never pulled: their registry name resolves nowhere."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

from e2e.image_archive import ImageFile, write_image

PAUSE_IMAGE: Final = "mlstack.local/e2e/pause:1"
PROBE_IMAGE: Final = "mlstack.local/e2e/probe:1"
COREDNS_IMAGE: Final = "mlstack.local/e2e/coredns:1"


def import_all(
    images: Path, bin_dir: Path, ctr: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Write each image's archive under `images` and import it with `ctr`."""
    for ref, binary, entrypoint, cmd, user in (
        (PAUSE_IMAGE, "e2e-pause", ["/pause"], [], "65535:65535"),
        (PROBE_IMAGE, "e2e-probe", ["/e2e-probe"], ["serve", ":8080"], "65532:65532"),
        (COREDNS_IMAGE, "coredns", ["/coredns"], [], "65532:65532"),
    ):
        data = (bin_dir / binary).read_bytes()
        archive = images / f"{binary}.tar"
        write_image(
            archive,
            ref,
            [ImageFile(entrypoint[0], data)],
            entrypoint=entrypoint,
            cmd=cmd,
            user=user,
        )
        ctr("images", "import", str(archive))
