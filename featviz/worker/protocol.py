"""Messages between a featviz call and the worker: JSON objects, each prefixed by its length,
over a Unix stream socket. The first message of a call carries the caller's stdin, stdout and
stderr as file descriptors (SCM_RIGHTS): the worker writes straight to the caller's terminal or
pipe, so TTY checks, terminal width, pipes closing early and the bytes written are those of the
caller's own process, and nothing is copied through the socket.

Calls: ``{"op": "run", …}`` (answered ``started`` or ``refused``, later ``exit`` or ``signal``;
the caller may send ``signal`` meanwhile), ``{"op": "status"}``, ``{"op": "stop"}``.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

_LENGTH = struct.Struct(">I")
_MAX_MESSAGE = 16 * 2**20  # an argv and an environment; anything longer is not ours
MAX_FDS = 3


class Closed(Exception):
    """The other side went away before a whole message arrived."""


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    # ensure_ascii keeps undecodable bytes of names and paths (surrogate escapes) intact.
    data = json.dumps(message).encode("ascii")
    frame = _LENGTH.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], fds)
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The next message and the descriptors that came with its first bytes."""
    head, fds = _read(sock, _LENGTH.size, with_fds=True)
    (length,) = _LENGTH.unpack(head)
    if length > _MAX_MESSAGE:
        raise Closed(f"message of {length} bytes")
    body, _ = _read(sock, length, with_fds=False)
    return json.loads(body), fds


def _read(sock: socket.socket, count: int, *, with_fds: bool) -> tuple[bytes, list[int]]:
    chunks: list[bytes] = []
    fds: list[int] = []
    while count:
        if with_fds:
            data, more, _, _ = socket.recv_fds(sock, count, MAX_FDS)
            fds += more
        else:
            data = sock.recv(count)
        if not data:
            raise Closed("connection closed")
        chunks.append(data)
        count -= len(data)
    return b"".join(chunks), fds
