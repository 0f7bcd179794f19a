"""Messages between a featviz call and the worker: JSON objects, each prefixed by its length,
over a Unix stream socket. The first message of a call carries the caller's stdin, stdout and
stderr as file descriptors (SCM_RIGHTS): the worker writes straight to the caller's terminal or
pipe, so TTY checks, terminal width, pipes closing early and the bytes written are those of the
caller's own process, and nothing is copied through the socket.

Calls: ``{"op": "run", …}`` (answered ``started`` or ``refused``, later ``exit`` or ``signal``;
the caller may send ``signal`` meanwhile), ``{"op": "status"}``, ``{"op": "stop"}``. Any other
first message (another JSON value, a field missing or of the wrong type, too large, too deep)
is answered ``refused`` with the reason (``Malformed``, ``problem``).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import socket
import struct
from collections.abc import Callable
from typing import Any

_LENGTH = struct.Struct(">I")
_MAX_MESSAGE = 16 * 2**20  # an argv and an environment; anything longer is not ours
# Ours nest three deep ({"stdio": {"stdin": […]}}); a deeper one would only make json recurse.
_MAX_DEPTH = 8
# A JSON string (its escapes included) or a bracket: brackets inside strings do not nest.
_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
MAX_FDS = 3
OPS = ("run", "status", "stop")


class Closed(Exception):
    """The other side went away before a whole message arrived."""


class Malformed(Exception):
    """A whole message arrived that is not one of ours; ``str()`` says how, in a short line
    that never quotes more than a few characters of it."""


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
    """The next message and the descriptors that came with its first bytes. Malformed: not a
    JSON object, too large (its body then left unread), or nested too deep; the descriptors
    that came with a message not returned are closed."""
    head, fds = _read(sock, _LENGTH.size, with_fds=True)
    try:
        (length,) = _LENGTH.unpack(head)
        if length > _MAX_MESSAGE:
            raise Malformed(f"a message of {length} bytes, over {_MAX_MESSAGE}")
        body, _ = _read(sock, length, with_fds=False)
        return _decode(body), fds
    except BaseException:
        close(fds)
        raise


def _decode(body: bytes) -> dict[str, Any]:
    # json.loads recurses once per level: the nesting is measured before it ever runs.
    if body.count(b"[") + body.count(b"{") > _MAX_DEPTH and _depth(body) > _MAX_DEPTH:
        raise Malformed(f"nested deeper than {_MAX_DEPTH}")
    try:
        message = json.loads(body)
    except ValueError:
        raise Malformed("not JSON") from None
    if not isinstance(message, dict):
        raise Malformed(f"a JSON object expected, not {_json_type(message)}")
    return message


def _depth(body: bytes) -> int:
    """How deep the brackets nest, counted only until it exceeds the limit."""
    depth = deepest = 0
    for token in _NESTING.finditer(body):
        if token[0] in (b"[", b"{"):
            depth += 1
            deepest = max(depth, deepest)
            if deepest > _MAX_DEPTH:
                break
        elif token[0] in (b"]", b"}"):
            depth -= 1
    return deepest


def close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


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


def problem(request: dict[str, Any], descriptors: int, version: str) -> str | None:
    """What makes ``request`` none of ours, or None. A call of other code (another
    ``version``) is not looked into further: the worker answers it ``version``."""
    op = request.get("op")
    if op not in OPS:
        return f"unknown op {_shown(op)}: expected one of {', '.join(OPS)}"
    if op != "run":
        return None
    if not isinstance(request.get("version"), str):
        return "'version' must be a string"
    if request["version"] != version:
        return None
    if descriptors != MAX_FDS:
        return f"a call passes {MAX_FDS} descriptors (stdin, stdout, stderr), not {descriptors}"
    for name, (valid, expected) in _CALL_FIELDS.items():
        if name not in request:
            return f"'{name}' is missing"
        if not valid(request[name]):
            return f"'{name}' must be {expected}"
    return None


def _is_os_string(value: Any) -> bool:
    """A string a process could be given: no NUL, encodable as the OS's bytes."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return True


def _is_argv(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(map(_is_os_string, value))


def _is_env(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _is_os_string(name) and name and "=" not in name and _is_os_string(text)
        for name, text in value.items()
    )


def _is_umask(value: Any) -> bool:
    return type(value) is int and 0 <= value <= 0o777


def _is_stream(value: Any) -> bool:
    """[encoding, errors, line_buffering, write_through], with a codec and an error handler
    Python knows."""
    if not isinstance(value, list) or [type(item) for item in value] != [str, str, bool, bool]:
        return False
    try:
        codecs.lookup(value[0])
        codecs.lookup_error(value[1])
    except LookupError:
        return False
    return True


def _is_stdio(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and sorted(value) == ["stderr", "stdin", "stdout"]
        and all(map(_is_stream, value.values()))
    )


_CALL_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "argv": (_is_argv, "a non-empty list of strings"),
    "prog": (lambda value: isinstance(value, str), "a string"),
    "cwd": (_is_os_string, "a string"),
    "env": (_is_env, "an object of strings, names without '='"),
    "umask": (_is_umask, "an integer from 0 to 0o777"),
    "stdio": (
        _is_stdio,
        "{stdin, stdout, stderr: [encoding, errors, line_buffering, write_through]}",
    ),
}


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _shown(value: Any) -> str:
    """``value`` as JSON, cut to a few characters: a refusal never echoes a whole request."""
    text = json.dumps(value)
    return text if len(text) <= 20 else text[:19] + "…"
