"""Real upstream servers on loopback that record what reaches them.

HTTP/1.1 (keep-alive, Content-Length, chunked, Expect: 100-continue) and, with
``http2=True``, HTTP/2 via the `h2` library, over TLS or plain TCP. Every request is
answered 200 with a JSON summary; ``/status/<code>`` answers that status.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str
    sni: str | None
    tls: bool

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class Upstream:
    host: str
    port: int
    _sock: socket.socket
    _ctx: ssl.SSLContext | None
    requests: list[RecordedRequest] = field(default_factory=list)
    connections: int = 0
    _raw: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: set = field(default_factory=set)
    _stopped: bool = False
    goaway_first: bool = False  # HTTP/2: refuse the first request of the first connection with GOAWAY
    goaways: int = 0

    @classmethod
    def start(cls, *, host: str = "127.0.0.1", port: int = 0, cert: Path | None = None, key: Path | None = None,
              http2: bool = False, tls_versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None,
              alpn: bool = True, goaway_first: bool = False) -> "Upstream":
        ctx = None
        if cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            if alpn:  # without ALPN a client may speak HTTP/2 to the proxy, HTTP/1.1 upstream
                ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
            if tls_versions:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
                ctx.minimum_version, ctx.maximum_version = tls_versions
        sock = socket.create_server((host, port))
        server = cls(host, sock.getsockname()[1], sock, ctx)
        server.goaway_first = goaway_first
        if ctx:
            ctx.sni_callback = server._on_sni
        threading.Thread(target=server._accept_loop, daemon=True).start()
        return server

    # --- what tests read ----------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._raw.clear()

    def received_bytes(self) -> bytes:
        with self._lock:
            return b"".join(self._raw)

    def stop(self) -> None:
        self._stopped = True
        self._sock.close()
        for conn in list(self._live):
            try:
                conn.close()
            except OSError:
                pass

    # --- serving ------------------------------------------------------------------------

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.tollgate_sni = name  # type: ignore[attr-defined]

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._live.add(conn)
        conn.settimeout(10)
        sni = None
        try:
            if self._ctx:
                conn = self._ctx.wrap_socket(conn, server_side=True)
                self._live.add(conn)
                sni = getattr(conn, "tollgate_sni", None)
                if conn.selected_alpn_protocol() == "h2":
                    return self._serve_h2(conn, sni)
            self._serve_h1(_Reader(conn, self), conn, sni)
        except (OSError, ssl.SSLError, ValueError, h2.exceptions.ProtocolError):
            pass
        finally:
            self._live.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _record(self, request: RecordedRequest) -> tuple[int, bytes, dict[str, str]]:
        with self._lock:
            self.requests.append(request)
        status, extra = 200, {}
        if request.path.startswith("/status/"):
            status = int(request.path.split("/")[2].split("?")[0])
        if request.path.startswith("/delay/"):  # a slow upstream: answers after N seconds
            time.sleep(float(request.path.split("/")[2]))
        if request.path.startswith("/redirect?to="):
            status, extra = 302, {"Location": request.path.split("=", 1)[1]}
        host = request.header("host") or request.header(":authority")
        body = json.dumps({"ok": True, "method": request.method, "path": request.path, "host": host,
                           "body_length": len(request.body)}).encode()
        return status, body, extra

    def _serve_h1(self, reader: "_Reader", conn: socket.socket, sni: str | None) -> None:
        while True:
            line = reader.line()
            if not line:
                return
            method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            headers = []
            while (h := reader.line()) not in (b"\r\n", b"\n", b""):
                k, _, v = h.decode("latin-1").partition(":")
                headers.append((k.strip(), v.strip()))
            lower = {k.lower(): v for k, v in headers}
            if lower.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "chunked" in lower.get("transfer-encoding", "").lower():
                body = reader.chunked()
            else:
                body = reader.exact(int(lower.get("content-length", "0")))
            if lower.get("upgrade", "").lower() == "websocket":
                return self._serve_ws(reader, conn, target, lower["sec-websocket-key"], headers, sni)
            status, payload, extra = self._record(RecordedRequest(method, target, headers, body, "HTTP/1.1", sni, bool(self._ctx)))
            more = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n{more}\r\n".encode()
                         + payload)
            if lower.get("connection", "").lower() == "close":
                return

    def _serve_h2(self, conn: ssl.SSLSocket, sni: str | None) -> None:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        while True:
            data = conn.recv(65536)
            if not data:
                return
            with self._lock:
                self._raw.append(data)
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    if self.goaway_first and self.goaways == 0:
                        # "I processed nothing": the client may safely retry on a new connection.
                        self.goaways += 1
                        h2conn.close_connection(last_stream_id=0)
                        conn.sendall(h2conn.data_to_send())
                        return
                    streams[event.stream_id] = (list(event.headers), bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id][1].extend(event.data)
                    h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, body = streams.pop(event.stream_id)
                    pseudo = dict(h for h in headers if h[0].startswith(":"))
                    status, payload, _ = self._record(RecordedRequest(
                        pseudo.get(":method", ""), pseudo.get(":path", ""), headers, bytes(body), "HTTP/2", sni, True))
                    h2conn.send_headers(event.stream_id, [(":status", str(status)), ("content-type", "application/json"),
                                                          ("content-length", str(len(payload)))])
                    h2conn.send_data(event.stream_id, payload, end_stream=True)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            conn.sendall(h2conn.data_to_send())


    def _serve_ws(self, reader: "_Reader", conn: socket.socket, path: str, key: str,
                  headers: list[tuple[str, str]], sni: str | None) -> None:
        """A minimal WebSocket echo (RFC 6455, unfragmented frames): each message is recorded."""
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        conn.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
        while True:
            b1, b2 = reader.exact(2)
            opcode, length = b1 & 0x0F, b2 & 0x7F
            if length == 126:
                length = int.from_bytes(reader.exact(2), "big")
            elif length == 127:
                length = int.from_bytes(reader.exact(8), "big")
            mask = reader.exact(4) if b2 & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(reader.exact(length)))
            if opcode == 8:
                conn.sendall(b"\x88\x00")
                return
            if opcode in (1, 2):
                self._record(RecordedRequest("WS", path, headers, payload, "WebSocket", sni, bool(self._ctx)))
                size = bytes([len(payload)]) if len(payload) < 126 else b"\x7e" + len(payload).to_bytes(2, "big")
                conn.sendall(bytes([0x80 | opcode]) + size + payload)
            elif opcode == 9:
                conn.sendall(b"\x8a" + bytes([len(payload)]) + payload)


class _Reader:
    """Buffered reads from a socket that also keep every raw byte for the test to inspect."""

    def __init__(self, conn: socket.socket, upstream: Upstream):
        self.conn, self.upstream, self.buf = conn, upstream, b""

    def _fill(self) -> bool:
        data = self.conn.recv(65536)
        if data:
            with self.upstream._lock:
                self.upstream._raw.append(data)
            self.buf += data
        return bool(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            if not self._fill():
                out, self.buf = self.buf, b""
                return out
        out, _, self.buf = self.buf.partition(b"\n")
        return out + b"\n"

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ValueError("connection closed mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def chunked(self) -> bytes:
        body = b""
        while True:
            line = self.line()
            if not line.endswith(b"\n"):  # like a real server: a body cut short is not a request
                raise ValueError("connection closed mid-body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := self.line()) not in (b"\r\n", b"\n"):
                    if not trailer:
                        raise ValueError("connection closed mid-body")
                return body
            body += self.exact(size)
            self.exact(2)
