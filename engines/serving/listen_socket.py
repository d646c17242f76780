"""The listening socket of ``rapdeploy serve``: bind it (a busy port or a foreign address is a one-line usage error),
say where a browser on this machine opens it, and which ``Host`` names a server on it answers."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence

from rap_deploy.errors import UsageError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one; an IPv6 ``host`` with or without brackets,
    ``[::1]`` as in a URL); :class:`UsageError` when it cannot bind."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):  # getaddrinfo knows no brackets: "[::1]" was "Name unknown"
        bare = bare[1:-1]
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}; pass a host name or address of this machine, 127.0.0.1 "
                         "(this machine only) or 0.0.0.0 (every network)") from None
    family, kind, proto, _, addr = infos[0]
    # getaddrinfo's protocol (IPPROTO_TCP), not 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets
    # whose proto says TCP, and with Nagle on, every response after a connection's first waited for the client's
    # delayed ACK between its header and body writes (~40 ms per request on a kept-alive connection)
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:  # no port helps
            raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror}); pass one of its "
                             "addresses, 127.0.0.1 (this machine only) or 0.0.0.0 (every network)") from None
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None
    sock.listen(2048)
    return sock


def socket_url(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket that a client on this machine can open: an IPv6 address in brackets
    (a zone as ``%25``), and a socket listening on every interface (``0.0.0.0``, ``::``: no address a browser can
    open) by the loopback address of its family (see :func:`listens_everywhere`)."""
    host, port = sock.getsockname()[:2]
    if listens_everywhere(sock):
        host = "::1" if sock.family == socket.AF_INET6 else "127.0.0.1"
    return f"http://[{host.replace('%', '%25')}]:{port}" if ":" in host else f"http://{host}:{port}"


def bound_address(sock: socket.socket) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``sock`` is bound to (an IPv6 zone, ``%eth0``, left out)."""
    return ipaddress.ip_address(str(sock.getsockname()[0]).split("%")[0])


def listens_everywhere(sock: socket.socket) -> bool:
    """Whether ``sock`` is bound to the unspecified address (``0.0.0.0`` or ``::``): every interface."""
    return bound_address(sock).is_unspecified


def listening_note(sock: socket.socket) -> str:
    """The end of :func:`banner` for a server on ``sock``: on every interface, that other machines use this one's
    address; else empty. Read from the socket before the server runs (a stop may close it before the banner prints)."""
    if not listens_everywhere(sock):
        return ""
    return (f"; listening on every interface ({sock.getsockname()[0]}): from other machines open this machine's "
            "address instead")


def hosts_to_check(sock: socket.socket, allow: Sequence[str] = ()) -> frozenset[str] | None:
    """The ``Host`` names a server listening on ``sock`` answers besides loopback names (``create_app``'s
    ``allowed_hosts``): ``allow`` when it listens on a loopback address (web pages reach it through DNS rebinding),
    ``None`` (any) when it listens on another (exposed on purpose, behind a gateway) or ``allow`` holds ``*``.
    Raises :class:`UsageError` for a name that cannot be a host."""
    for name in allow:
        if not name or any(c.isspace() or c in "/@?#" for c in name):
            raise UsageError(f"--allow-host {name!r} is not a host name or address")
    if "*" in allow:
        return None
    return frozenset(allow) if bound_address(sock).is_loopback else None
