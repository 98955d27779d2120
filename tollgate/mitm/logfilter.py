"""Client protocol errors that mitmproxy answers on its own, without a flow or a hook: a
malformed request line, a request head the client never finished. mitmproxy only logs them,
with the raw bytes in the message. This filter on mitmproxy's connection logger drops the
raw bytes from the console log and hands each error to the addon to audit."""

from __future__ import annotations

import logging
import re
from typing import Callable

SERVER_LOGGER = "mitmproxy.proxy.server"
_INCOMPLETE = "Client closed connection before completing request headers"
_PARSE_ERROR = re.compile(r"^(?P<addr>\S+): (?P<kind>[A-Za-z][A-Za-z0-9 /]{0,80})(?::|$)")
_PARSE_ERROR_WORDS = re.compile(r"HTTP|[Rr]equest|[Hh]eader")


class ProtocolErrorFilter(logging.Filter):
    def __init__(self, on_error: Callable[[tuple | None, str], None], passes_at: int):
        super().__init__()
        self.on_error = on_error
        self.passes_at = passes_at  # other records pass only at the level that passed before

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
            client = getattr(record, "client", None)
            if message.startswith(_INCOMPLETE):
                kind = _INCOMPLETE
            else:
                match = _PARSE_ERROR.match(message)
                kind = match.group("kind").strip() if match and record.levelno <= logging.INFO else ""
                if not _PARSE_ERROR_WORDS.search(kind):
                    return record.levelno >= self.passes_at  # not a parse error: as before
            record.msg, record.args = f"client protocol error: {kind} (raw bytes not logged)", ()
            self.on_error(client, kind)
        except Exception:
            logging.getLogger("tollgate").exception("tollgate: could not audit a client protocol error")
        return True


def install(on_error: Callable[[tuple | None, str], None]) -> ProtocolErrorFilter:
    """The logger must let INFO through to reach the filter; what the console showed before
    (WARNING and up, unless mitmproxy's own verbosity says otherwise) still decides the rest."""
    logger = logging.getLogger(SERVER_LOGGER)
    f = ProtocolErrorFilter(on_error, logger.getEffectiveLevel())
    logger.addFilter(f)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return f


def uninstall(f: ProtocolErrorFilter) -> None:
    logging.getLogger(SERVER_LOGGER).removeFilter(f)
