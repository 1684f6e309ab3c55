"""A fault-injecting HTTP proxy on loopback in front of the moto S3 server (test-only).

Every request is forwarded to the upstream server, except that a seeded random fraction is failed in
one of the ways object storage fails in production: 503 SlowDown, 500 InternalError, or a connection
reset with no response at all. With `deny_writes` set (it can be switched while the proxy runs), every PUT and
POST is answered 403 AccessDenied, as by a bucket that became read-only.

A storm (`storm(fraction, seconds)`) fails that fraction of requests for that many seconds from the call, then
none: the fail fraction becomes a function of the time since the storm began. `kinds` limits the ways requests
fail (a SlowDown storm: `kinds=("503",)`).
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")
SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream_port: int, fail_fraction: float = 0.2, seed: int = 0,
                 kinds: tuple[str, ...] = ("503", "500", "reset")) -> None:
        self.upstream_port = upstream_port
        self.fail_fraction = fail_fraction
        self.kinds = kinds
        self.schedule: Callable[[float], float] | None = None  # seconds since the storm began -> fail fraction
        self.storm_started = 0.0
        self.armed: tuple[Callable[[str, str], bool], float, float] | None = None
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"forwarded": 0, "503": 0, "500": 0, "reset": 0, "403": 0}
        self.deny_writes = False
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request forwarded, in order
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    if proxy.armed is not None and proxy.armed[0](self.command, self.path):
                        proxy._start_storm(*proxy.armed[1:])
                    roll = proxy.rng.random()
                    kind = None
                    fraction = proxy.current_fraction()
                    if proxy.deny_writes and self.command in ("PUT", "POST"):
                        kind = "403"
                        proxy.counts[kind] += 1
                    elif roll < fraction:
                        kind = proxy.kinds[int(roll / fraction * len(proxy.kinds)) % len(proxy.kinds)]
                        proxy.counts[kind] += 1
                    else:
                        proxy.counts["forwarded"] += 1
                        proxy.requests.append((self.command, self.path))
                if kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                if kind in ("503", "500", "403"):
                    payload = {"503": SLOWDOWN, "500": INTERNAL, "403": DENIED}[kind]
                    self.send_response(int(kind))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":  # an answer to HEAD has no body (as S3's): the client reads none
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                # HEAD answers carry the object's length, not the (empty) body's
                self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client that hung up mid-answer (closed a pooled
                import sys  # connection, gave up waiting) is part of the weather here, not a proxy error

                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def current_fraction(self) -> float:
        if self.schedule is None:
            return self.fail_fraction
        return self.schedule(time.monotonic() - self.storm_started)

    def storm(self, fraction: float, seconds: float, when: Callable[[str, str], bool] | None = None) -> None:
        """Fail `fraction` of the requests for `seconds` from now (or from the first request `when(method, path)`
        is true for, that request included), then none."""
        with self.lock:
            if when is None:
                self._start_storm(fraction, seconds)
            else:
                self.armed = (when, fraction, seconds)

    def _start_storm(self, fraction: float, seconds: float) -> None:
        self.armed = None
        self.storm_started = time.monotonic()
        self.schedule = lambda t: fraction if t < seconds else 0.0

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
