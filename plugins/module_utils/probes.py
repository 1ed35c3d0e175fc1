# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What preflight learns beyond libvirt, from the host running the module: name resolution and one
TCP connection to the destination's migration port (nothing is sent)."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

PORT_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class PortProbe:
    host: str
    port: int
    outcome: str  # refused | open | timeout | unreachable | unresolved
    detail: str = ""


def resolve_host(name):
    """The addresses ``name`` resolves to from the host running the module; () when it does not."""
    try:
        return tuple(sorted({info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}))
    except (socket.gaierror, UnicodeError):
        return ()


def probe_tcp_port(host, port, timeout_s=PORT_PROBE_TIMEOUT_S):
    """Connect once to host:port and say how the destination answered (nothing is sent)."""
    try:
        addresses = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as error:
        return PortProbe(host, port, "unresolved", str(error))
    family, kind, proto, _name, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        probe.settimeout(timeout_s)
        try:
            probe.connect(address)
        except ConnectionRefusedError:
            return PortProbe(host, port, "refused")
        except TimeoutError:
            return PortProbe(host, port, "timeout")
        except OSError as error:
            outcome = "unreachable" if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else "error"
            return PortProbe(host, port, outcome, error.strerror or str(error))
    return PortProbe(host, port, "open")
