"""The glue between mitmproxy's request streaming and a StreamScanner.

mitmproxy calls ``flow.request.stream`` with each piece of the body as it arrives (and with
b"" at the end) and forwards what it returns. It calls it inside its event handling, so the
guard must never raise: anything unexpected stops the stream like a block.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable

from mitmproxy import ctx, http

from tollgate.dlp.inspect import Outcome
from tollgate.dlp.stream import StreamScanner

logger = logging.getLogger(__name__)


class StreamGuard:
    """``flow.request.stream``: the body through the scanner; ``on_stop`` is called once when
    the scanner stops and returns True when the policy forwards the rest anyway (report)."""

    def __init__(self, scanner: StreamScanner, on_stop: Callable[[Outcome], bool], on_error: Callable[[], None]):
        self.scanner, self._on_stop, self._on_error = scanner, on_stop, on_error
        self.used = False  # False: the request had no body and was never streamed
        self.failed = False
        self._stop_handled = False

    def __call__(self, data: bytes) -> list[bytes]:
        self.used = True
        if self.failed:
            return []
        try:
            out = self.scanner.feed(data) if data else self.scanner.finish()
            if self.scanner.stopped is not None and not self.scanner.passing and not self._stop_handled:
                self._stop_handled = True
                if self._on_stop(self.scanner.stopped):
                    out = out + self.scanner.pass_rest()
            return out
        except Exception as e:
            self.failed = True
            # Type and stack only: an exception's message may quote request data.
            logger.error("tollgate: stream scan failed (%s); the request is cut\n%s", type(e).__name__,
                         "".join(traceback.format_tb(e.__traceback__)))
            try:
                self._on_error()
            except Exception:
                logger.exception("tollgate: could not refuse a failed stream scan")
            return []


def cut_upstream(flow: http.HTTPFlow) -> bool:
    """Close the upstream connection of a streamed request that may not go on. The upstream
    has an incomplete request and drops it; mitmproxy answers the client (HTTP/1.1: a 502
    page, HTTP/2: a 502 on that stream). False when there was no open connection to close."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver else None
    io = handler.transports.get(flow.server_conn) if handler else None
    if io is None:
        return False
    if io.writer is not None:
        # At once, not when the close is processed: mitmproxy goes on to send the end of the
        # body, and for a chunked body that end would turn the cut request into a complete one.
        io.writer.transport.abort()
    handler.close_connection(flow.server_conn)
    return True
