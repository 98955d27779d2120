"""Real clients: curl in a subprocess, and raw sockets for what curl will not send."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CurlResult:
    returncode: int
    status: int | None
    body: bytes
    stderr: str

    def json(self) -> dict:
        return json.loads(self.body)


def curl(url: str, *, proxy: str | None, cacert: Path | None = None, args: tuple[str, ...] = (),
         timeout: float = 20) -> CurlResult:
    cmd = ["curl", "-sS", "-v", "--max-time", str(int(timeout)), "-o", "-", "-w", "\n%{http_code}"]
    if proxy:
        cmd += ["--proxy", proxy, "--noproxy", ""]
    if cacert:
        cmd += ["--cacert", str(cacert)]
    cmd += [*args, url]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout + 10, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"})
    body, _, code = done.stdout.rpartition(b"\n")
    return CurlResult(done.returncode, int(code) if code.strip().isdigit() and int(code) else None,
                      body, done.stderr.decode("utf-8", "replace"))


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with Content-Length (what the proxy itself sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def connect_tunnel(proxy_port: int, target: str, *, source: str = "127.0.0.1",
                   extra_headers: str = "") -> tuple[socket.socket, int, dict[str, str], bytes]:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10, source_address=(source, 0))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra_headers}\r\n".encode("utf-8"))
    status, headers, body = read_http_response(sock)
    return sock, status, headers, body


def tls_over(sock: socket.socket, cafile: Path, server_hostname: str | None, alpn: list[str] | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if server_hostname is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(sock, server_hostname=server_hostname)
