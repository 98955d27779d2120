"""The operations listener: GET /metrics (Prometheus) and GET /healthz (JSON), on its own
address, never on the proxy port. Runs in the proxy's event loop, so a stuck loop also
fails the health check. No mitmproxy."""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from tollgate.metrics import CONTENT_TYPE, Metrics

READ_TIMEOUT = 5.0
MAX_HEAD = 8192


async def start_ops_server(host: str, port: int, metrics: Metrics,
                           health: Callable[[], list[str]]) -> asyncio.Server:
    """``health()`` returns the problems that make the proxy unusable; none means healthy."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, _, rest = head[:MAX_HEAD].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "application/json", b'{"error": "use GET"}'
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE, metrics.render()
            elif path == "/healthz":
                problems = health()
                status = 503 if problems else 200
                ctype, body = "application/json", json.dumps(
                    {"status": "unhealthy" if problems else "ok", "problems": problems}).encode()
            else:
                status, ctype, body = 404, "application/json", b'{"error": "try /metrics or /healthz"}'
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    # reuse_port=False: with --workers, each worker's ops listener must have a port of its own.
    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD, reuse_port=False)
