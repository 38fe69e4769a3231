"""A DNS question asked by hand: whether CoreDNS answers behind the kube-dns Service."""

from __future__ import annotations

import socket
import struct


def dns_query(server: str, name: str, timeout: float = 2, port: int = 53) -> list[str]:
    """The A records of `name` from `server` (one UDP question; [] when there is none)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack(">HHHHHH", 0x4D4C, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, port))
        reply = s.recv(4096)
    _, flags, qd, an, _, _ = struct.unpack(">HHHHHH", reply[:12])
    if flags & 0x000F:
        return []
    pos = 12
    for _ in range(qd):
        while reply[pos]:
            pos += reply[pos] + 1
        pos += 5
    found = []
    for _ in range(an):
        pos += 2 if reply[pos] & 0xC0 == 0xC0 else len(qname)
        rtype, _, _, length = struct.unpack(">HHIH", reply[pos : pos + 10])
        pos += 10
        if rtype == 1 and length == 4:
            found.append(socket.inet_ntoa(reply[pos : pos + 4]))
        pos += length
    return found
