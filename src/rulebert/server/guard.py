"""ASGI guards for ``rulebert serve``: body limits and receive deadlines, the API key, the Host check, and a
uvicorn protocol that closes connections which are opened and left idle or send their headers too slowly.

These sit in front of the FastAPI app (:mod:`rulebert.server.app`) and know nothing of scoring.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable, Sequence
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import anyio

from rulebert.core.errors import RulebertError

# After an early answer (413, 401) to a request whose body is still arriving, at most this much of it is
# read and dropped, for at most DRAIN_SECONDS, before the socket is closed: the answer is sent first, so
# the drain never delays it; it only spares the client a reset connection while it is still sending.
DRAIN_BYTES = 1_048_576
DRAIN_SECONDS = 1.0
REQUEST_TIMEOUT = 10.0  # seconds to send a request's headers, and then its body (else 408, closed)
MAX_CONNECTIONS = 64  # open connections served at once; beyond it requests get 503
KEEP_ALIVE_SECONDS = 5  # an idle keep-alive connection is closed after this
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # as they appear in a Host header
OPEN_PATHS = ("/", "/healthz", "/openapi.json")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
API_KEY_ENV = "RULEBERT_API_KEY"


# --- raw ASGI helpers -----------------------------------------------------------------------------------


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _body_follows(scope: dict) -> bool:
    """Whether the request declares a body (which may still be on its way)."""
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in (b"", b"0")
    return b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()


async def _refuse(
    scope: dict,
    receive: Any,
    send: Any,
    status: int,
    detail: str,
    *,
    unread_body: bool,
    headers: Sequence[tuple[bytes, bytes]] = (),
    drain: bool = True,
) -> None:
    """Answer ``status`` at once, without waiting for (or asking for, with ``100 Continue``) the body.

    When part of the body may be unread the connection is closed after the answer; a little of what the
    client is still sending is read and dropped first (``DRAIN_BYTES``, ``DRAIN_SECONDS``), since closing
    a socket with unread data resets it and some clients then lose the answer.
    """
    body = json.dumps({"detail": detail}).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if unread_body:
        raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": [*raw_headers, *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": True})
    expects_continue = (_header(scope, b"expect") or b"").lower() == b"100-continue"
    if unread_body and drain and not expects_continue:  # such a client sends no body after a final answer
        with anyio.move_on_after(DRAIN_SECONDS):
            drained = 0
            while drained <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break
                drained += len(message.get("body", b""))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 without being parsed, and one
    that has not fully arrived within ``timeout`` seconds 408; the connection is closed after either.

    The declared Content-Length is checked first, before any of the body is read (a client that sent
    ``Expect: 100-continue`` never gets ``100 Continue``); a chunked body is counted as it arrives.
    """

    def __init__(self, app: Any, limit: int, timeout: float = REQUEST_TIMEOUT) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = (_header(scope, b"content-length") or b"").strip()
        if declared.isdigit() and (len(declared) > 18 or int(declared) > self.limit):
            size = f"{int(declared)} bytes" if len(declared) <= 18 else f"{len(declared)} digits of bytes"
            await self._too_big(scope, receive, send, size)
            return
        chunks: list[bytes] = []
        size, complete, too_big = 0, False, False
        with anyio.move_on_after(self.timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away: there is no one to answer
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.limit:
                    too_big = True
                    break
                if not message.get("more_body", False):
                    complete = True
                    break
        if too_big:
            await self._too_big(scope, receive, send, f"over {self.limit} bytes")
            return
        if not complete:
            detail = f"the request body did not arrive within {self.timeout:g} s"
            await _refuse(scope, receive, send, 408, detail, unread_body=True, drain=False)
            return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_big(self, scope: dict, receive: Any, send: Any, size: str) -> None:
        detail = f"request body is {size}; the limit is {self.limit} bytes"
        await _refuse(scope, receive, send, 413, detail, unread_body=True)


class ApiKey:
    """ASGI middleware: every request but ``OPEN_PATHS`` needs ``Authorization: Bearer <key>``, else 401.

    The key is compared in constant time; a refused request's body is never read.
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key.encode("ascii")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            detail = "this server needs an API key: send the header 'Authorization: Bearer <key>'"
            challenge = [(b"www-authenticate", b"Bearer")]
            unread = _body_follows(scope)
            await _refuse(scope, receive, send, 401, detail, unread_body=unread, headers=challenge)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: dict) -> bool:
        scheme, _, token = (_header(scope, b"authorization") or b"").strip().partition(b" ")
        matches = hmac.compare_digest(token.strip(), self.key)  # constant time, whatever the scheme
        return matches and scheme.lower() == b"bearer"


def _is_json_type(content_type: bytes) -> bool:
    """``application/json`` or ``application/*+json`` (parameters such as ``charset`` allowed)."""
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))


def _origin_netloc(origin: bytes) -> bytes | None:
    """``host[:port]`` of an Origin header, the scheme's default port dropped; None for ``null`` or junk."""
    scheme, sep, rest = origin.strip().lower().partition(b"://")
    if not sep or not rest or b"/" in rest:
        return None
    default = {b"http": b":80", b"https": b":443"}.get(scheme)
    return rest[: -len(default)] if default and rest.endswith(default) else rest


def _host_netloc(host: bytes) -> bytes:
    host = host.strip().lower()
    for default in (b":80", b":443"):
        if host.endswith(default):
            return host[: -len(default)]
    return host


class SameOrigin:
    """ASGI middleware against cross-site request forgery on ``/v1/*``.

    A page on another site can make a browser send a "simple" POST (a form, ``text/plain``) to a loopback
    server without asking it first, and with no API key set nothing else stops it. So: a request with an
    unsafe method whose ``Origin`` is not this server's own (the Host it was sent to) is a 403; and a
    request to ``state_changing`` paths that carries a non-JSON ``Content-Type`` is a 415 (a browser
    sends ``application/json`` cross-site only after a CORS preflight, which this server never grants).
    Requests without an Origin (curl, scripts, server-to-server) are not browsers' and pass.
    """

    def __init__(self, app: Any, state_changing: Any) -> None:
        self.app, self.state_changing = app, state_changing

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS and scope["path"].startswith("/v1/"):
            origin = _header(scope, b"origin")
            if origin is not None and _origin_netloc(origin) != _host_netloc(_header(scope, b"host") or b""):
                shown = origin.decode("latin-1")[:100]
                detail = f"cross-origin request refused (Origin {shown!r} is not this server)"
                await _refuse(scope, receive, send, 403, detail, unread_body=_body_follows(scope))
                return
            content_type = _header(scope, b"content-type")
            if self.state_changing(scope) and content_type is not None and not _is_json_type(content_type):
                shown = content_type.decode("latin-1")[:100]
                detail = f"Content-Type {shown!r} is not supported: send application/json"
                await _refuse(scope, receive, send, 415, detail, unread_body=_body_follows(scope))
                return
        await self.app(scope, receive, send)


def check_api_key(key: str, source: str) -> str:
    """``key`` stripped, or a one-line error naming ``source`` when it is empty or not header-safe."""
    key = key.strip()
    if not key:
        raise RulebertError(f"{source}: the API key is empty")
    if not all("\x21" <= c <= "\x7e" for c in key):
        raise RulebertError(f"{source}: the API key must be printable ASCII, without spaces")
    return key


def read_api_key(path: str | os.PathLike | None, environ: dict[str, str] | None = None) -> str | None:
    """The key from the file ``path`` (its content stripped), else from ``RULEBERT_API_KEY``, else None."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise RulebertError(f"{path}: cannot read the API key file ({reason})") from None
        return check_api_key(text, str(path))
    value = (os.environ if environ is None else environ).get(API_KEY_ENV)
    return None if value is None else check_api_key(value, API_KEY_ENV)


def _host_pattern(host: str) -> str:
    """A host name or address as it appears in a Host header (an IPv6 address in brackets), lower case."""
    host = host.strip().lower()
    try:
        IPv6Address(host.strip("[]"))
    except ValueError:
        return host
    return f"[{host.strip('[]')}]"


def allowed_hosts_for(bound: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host header values a server bound to ``bound`` accepts: loopback names, the bound address
    (unless it is a wildcard) and ``extra`` (``*`` accepts any; ``*.example.org`` any subdomain)."""
    extra = [_host_pattern(h) for h in extra]
    for pattern in extra:
        wildcard_ok = pattern == "*" or (pattern.startswith("*.") and "*" not in pattern[1:])
        if not pattern or any(c in pattern for c in "/ \t,") or ("*" in pattern and not wildcard_ok):
            raise RulebertError(f"--allowed-host {pattern!r}: expected a host name, an address or '*'")
        if ":" in pattern and not pattern.startswith("["):
            raise RulebertError(f"--allowed-host {pattern!r}: give the host without a port")
    if "*" in extra:
        return ["*"]
    hosts = list(LOOPBACK_HOSTS)
    if bound not in ("0.0.0.0", "::", ""):
        hosts.append(_host_pattern(bound))
    return list(dict.fromkeys([*hosts, *extra]))


def guarded_protocol(timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline on receiving a request.

    uvicorn closes an idle keep-alive connection, but not one that was opened and never used, nor one
    that sends its headers a byte at a time (slowloris). Here a connection's request headers must arrive
    within ``timeout`` seconds (of the connection, or of the request's first byte), else the connection is
    closed (with a 408 when part of a request came). A body is timed by :class:`BodyLimit` (408); as a
    backstop, one still arriving after twice ``timeout`` (a body no one reads) closes the connection.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    check_every = min(0.5, timeout / 4)
    timed_out = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._phase: tuple | None = self._current_phase()
            self._phase_since = self.loop.time()
            self._guard = self.loop.call_later(check_every, self._check)

        def _current_phase(self) -> tuple | None:
            """What the connection is waiting for from the client, if anything but a next request."""
            state = self.conn.their_state
            if state is h11.IDLE and (self.cycle is None or self.conn.trailing_data[0]):
                return ("headers", self.cycle)
            if state is h11.SEND_BODY:
                return ("body", self.cycle)
            return None

        def _check(self) -> None:
            self._guard = None
            if self.transport.is_closing():
                return
            phase, now = self._current_phase(), self.loop.time()
            if phase != self._phase:
                self._phase, self._phase_since = phase, now
            elif phase is not None and now - self._phase_since >= (
                timeout if phase[0] == "headers" else 2 * timeout
            ):
                if phase[0] == "headers" and self.conn.trailing_data[0]:
                    self.transport.write(timed_out)
                self.transport.close()
                return
            self._guard = self.loop.call_later(check_every, self._check)

        def connection_lost(self, exc: Exception | None) -> None:
            if getattr(self, "_guard", None) is not None:
                self._guard.cancel()
                self._guard = None
            super().connection_lost(exc)

    return GuardedH11Protocol
