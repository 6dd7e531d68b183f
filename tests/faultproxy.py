"""A small fault-injecting HTTP proxy for S3 tests: it sits on 127.0.0.1 in front of moto's server and, per
a schedule of rules, answers some requests with 503 SlowDown or 500 InternalError (S3's XML error bodies),
stalls them past the client's timeout, or resets the connection (before or after moto saw the request).

    proxy = FaultProxy("http://127.0.0.1:5000", [Rule("503", every=6), Rule("500", method="GET", key="bad.jpg")])
    proxy.start(); ...; proxy.stop(); proxy.injected  # {"503": 12, "500": 3, ...}

Stdlib only (http.server + http.client); one upstream connection per proxied request.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_ERRORS = {
    "503": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
}


@dataclass
class Rule:
    """What to inject, and into which requests.

    kind: "503" | "500" | "delay" (stall `delay` seconds, then drop the connection without an answer) |
          "reset" (RST before forwarding) | "reset_after" (forward to moto, then RST instead of answering).
    method / key: only requests with this HTTP method / whose path matches this regex (None: any).
    every: the Nth, 2Nth... matching request; first: the first K matching requests; neither: all of them.
    """

    kind: str
    method: str | None = None
    key: str | None = None
    every: int | None = None
    first: int | None = None
    delay: float = 5.0

    def __post_init__(self) -> None:
        self._seen = 0

    def hit(self, method: str, path: str) -> bool:
        if self.method and method != self.method:
            return False
        if self.key and not re.search(self.key, urllib.parse.unquote(path)):
            return False
        self._seen += 1
        if self.every:
            return self._seen % self.every == 0
        if self.first is not None:
            return self._seen <= self.first
        return True


class FaultProxy:
    def __init__(self, upstream: str, rules: list[Rule] | None = None) -> None:
        u = urllib.parse.urlparse(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules = list(rules or [])
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.requests += 1
                    rule = next((r for r in proxy.rules if r.hit(self.command, self.path)), None)
                    if rule:
                        proxy.injected[rule.kind] += 1
                if rule and rule.kind in _ERRORS:
                    status, phrase, code, message = _ERRORS[rule.kind]
                    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                           f"</Message><RequestId>fault-proxy</RequestId></Error>").encode()
                    self.send_response(status, phrase)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(xml)
                    return
                if rule and rule.kind == "delay":
                    time.sleep(rule.delay)
                    self._reset()
                    return
                if rule and rule.kind == "reset":
                    self._reset()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    resp_headers = resp.getheaders()
                    status, reason = resp.status, resp.reason
                finally:
                    conn.close()
                if rule and rule.kind == "reset_after":  # moto did the work; the client never hears of it
                    self._reset()
                    return
                self.send_response(status, reason)
                for k, v in resp_headers:
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                length = next((v for k, v in resp_headers if k.lower() == "content-length"), None)
                self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
