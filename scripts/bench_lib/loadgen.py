"""The load generator: a closed loop of N concurrent clients POSTing JSON over HTTPS, either
straight to the upstream or through an HTTP proxy (CONNECT, then TLS to the upstream's name
inside the tunnel, verified against the proxy's CA). Runs as its own process so its CPU is
separate from the orchestrator's; it speaks a line protocol on stdout:

  {"event": "ready"}            connections may start
  {"event": "measure-start"}    the warm-up is over; the window starts now
  {"event": "measure-end"}      the window is over; no new requests are started
  {"event": "result", ...}      counts, latency percentiles, status codes, errors, client CPU

HTTP/1.1 is written and parsed by hand (a request head, Content-Length or chunked responses),
HTTP/2 is a minimal hand-written codec (see H2Client); both on asyncio streams, so per-request client overhead is
small compared with a full client library. With `--mode new-connection` every request opens
a new TCP connection, CONNECT and TLS handshake, and its latency includes all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import struct
import sys
import time
from collections import Counter

import hpack

REQUEST_TIMEOUT = 15.0


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class BadResponse(Exception):
    pass


# --- a minimal HTTP/2 client codec (RFC 9113) -------------------------------------------
# One request at a time per connection is all the bench needs, so this is small: a static
# HPACK header block (static-table indices and plain literals, never the dynamic table), DATA
# frames within the peer's flow-control windows, and replies to SETTINGS and PING. It is
# several times cheaper per request than the `h2` library, which matters when the client
# shares two cores with the proxy. We announce SETTINGS_HEADER_TABLE_SIZE=0, so the peer's
# response header blocks are stateless too: `:status 200` is the single byte 0x88.

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
OUR_WINDOW = 1 << 24


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", sid) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out, value = [first | limit], value - limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_block(method_post: bool, authority: str, path: str, headers: list[tuple[int, str]]) -> bytes:
    """A header block: `:method POST` (static 3), `:scheme https` (static 7), then literals
    without indexing that name a static-table entry by index."""
    def literal(index: int, value: str) -> bytes:
        raw = value.encode()
        return _hpack_int(index, 4, 0x00) + _hpack_int(len(raw), 7, 0x00) + raw
    block = bytes((0x83 if method_post else 0x82, 0x87)) + literal(1, authority) + literal(4, path)
    return block + b"".join(literal(i, v) for i, v in headers)


def h2_status(block: bytes) -> int:
    i = 0
    while i < len(block) and block[i] & 0xE0 == 0x20:  # dynamic table size updates
        if block[i] & 0x1F == 0x1F:
            i += 1
            while block[i] & 0x80:
                i += 1
        i += 1
    if i < len(block) and block[i] == 0x88:
        return 200
    headers = hpack.Decoder().decode(bytes(block), raw=True)
    return int(dict(headers)[b":status"])


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.conn_window = 65535
        self.initial_window = 65535
        self.max_frame = 16384
        self.next_sid = 1
        self.unacked = 0
        settings = struct.pack(">HIHIHI", 0x1, 0, 0x2, 0, 0x4, OUR_WINDOW)
        writer.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                     + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", OUR_WINDOW - 65535)))

    async def _frame(self) -> tuple[int, int, int, bytes]:
        buf = self.buf
        while len(buf) < 9:
            data = await self.reader.read(262144)
            if not data:
                raise BadResponse("connection closed")
            buf += data
        length = int.from_bytes(buf[0:3], "big")
        while len(buf) < 9 + length:
            data = await self.reader.read(262144)
            if not data:
                raise BadResponse("connection closed")
            buf += data
        ftype, flags = buf[3], buf[4]
        sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buf[9:9 + length])
        del buf[:9 + length]
        return ftype, flags, sid, payload

    async def request(self, block: bytes, body: bytes) -> int:
        sid, self.next_sid = self.next_sid, self.next_sid + 2
        stream_window = self.initial_window
        out = [frame(HEADERS, END_HEADERS | (0 if body else END_STREAM), sid, block)]
        sent, status, done = 0, 0, False
        while True:
            while sent < len(body):
                n = min(self.max_frame, stream_window, self.conn_window, len(body) - sent)
                if n <= 0:
                    break
                chunk = body[sent:sent + n]
                sent += n
                stream_window -= n
                self.conn_window -= n
                out.append(frame(DATA, END_STREAM if sent == len(body) else 0, sid, chunk))
            if done:
                if self.unacked > OUR_WINDOW // 2:
                    out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
                    self.unacked = 0
            if out:
                self.writer.write(b"".join(out))
                out = []
            if done:
                return status
            ftype, flags, fsid, payload = await self._frame()
            if ftype == DATA:
                self.unacked += len(payload)
                done = fsid == sid and bool(flags & END_STREAM)
            elif ftype == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                end_headers = flags & END_HEADERS
                while not end_headers:
                    t2, f2, _, more = await self._frame()
                    if t2 != CONTINUATION:
                        raise BadResponse("HEADERS without CONTINUATION")
                    payload += more
                    end_headers = f2 & END_HEADERS
                if fsid == sid:
                    status = status or h2_status(payload)
                    done = bool(flags & END_STREAM)
            elif ftype == SETTINGS:
                if not flags & ACK:
                    for k in range(0, len(payload) - 5, 6):
                        ident, value = struct.unpack(">HI", payload[k:k + 6])
                        if ident == 0x4:
                            stream_window += value - self.initial_window
                            self.initial_window = value
                        elif ident == 0x5:
                            self.max_frame = value
                    out.append(frame(SETTINGS, ACK, 0))
            elif ftype == WINDOW_UPDATE:
                inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                if fsid == 0:
                    self.conn_window += inc
                elif fsid == sid:
                    stream_window += inc
            elif ftype == PING and not flags & ACK:
                out.append(frame(PING, ACK, 0, payload))
            elif ftype == RST_STREAM and fsid == sid:
                raise BadResponse(f"RST_STREAM {struct.unpack('>I', payload)[0]}")
            elif ftype == GOAWAY:
                raise BadResponse(f"GOAWAY {struct.unpack('>I', payload[4:8])[0]}")


class Conn:
    """One client connection: TCP (to the proxy or the upstream), CONNECT, TLS."""

    def __init__(self, cfg: argparse.Namespace, ctx: ssl.SSLContext):
        self.cfg, self.ctx = cfg, ctx
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.h2: H2Client | None = None

    async def open(self) -> None:
        cfg = self.cfg
        authority = f"{cfg.host}:{cfg.port}"
        if cfg.proxy:
            phost, pport = cfg.proxy.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(phost, int(pport))
            writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                writer.close()
                raise BadResponse(f"CONNECT {status.decode(errors='replace')}")
            await writer.start_tls(self.ctx, server_hostname=cfg.host)
        else:
            reader, writer = await asyncio.open_connection(cfg.connect_host, cfg.port, ssl=self.ctx,
                                                           server_hostname=cfg.host)
        self.reader, self.writer = reader, writer
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if cfg.http == "2":
            if alpn != "h2":
                raise BadResponse(f"ALPN {alpn!r}, not h2")
            self.h2 = H2Client(reader, writer)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None

    async def request(self, head: bytes, body: bytes, h2_block: bytes) -> int:
        if self.h2 is not None:
            return await self.h2.request(h2_block, body)
        self.writer.write(head + body)
        return await self._response_h1()

    async def _response_h1(self) -> int:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        elif length is None:
            raise BadResponse("response without length")
        return status


class Stats:
    def __init__(self) -> None:
        self.phase = "warmup"
        self.window: tuple[float, float] = (0.0, 0.0)
        self.latencies: list[float] = []
        self.completed = 0
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()
        self.connections = 0
        self.total_ok = 0  # every 200, warm-up included: what the upstream should have logged


async def client(cfg: argparse.Namespace, ctx: ssl.SSLContext, bodies: list[bytes], stats: Stats, index: int) -> None:
    authority = f"{cfg.host}:{cfg.port}"
    heads = [(f"POST {cfg.path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tollgate-bench/1\r\n"
              f"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {len(b)}\r\n\r\n").encode()
             for b in bodies]
    # static table: 58 user-agent, 31 content-type, 19 accept, 28 content-length
    h2_blocks = [hpack_block(True, authority, cfg.path, [(58, "tollgate-bench/1"), (31, "application/json"),
                                                         (19, "application/json"), (28, str(len(b)))])
                 for b in bodies]
    conn: Conn | None = None
    i = index
    while stats.phase != "done":
        i += 1
        n = i % len(bodies)
        start = time.perf_counter()
        try:
            if conn is None:
                conn = Conn(cfg, ctx)
                await asyncio.wait_for(conn.open(), REQUEST_TIMEOUT)
                stats.connections += 1
            status = await asyncio.wait_for(conn.request(heads[n], bodies[n], h2_blocks[n]), REQUEST_TIMEOUT)
            end = time.perf_counter()
            if status == 200:
                stats.total_ok += 1
            if cfg.mode == "new-connection":
                conn.close()
                conn = None
        except Exception as e:  # counted, and the connection is replaced
            end = time.perf_counter()
            if stats.phase == "measure":
                stats.errors[type(e).__name__ + (f": {e}" if isinstance(e, BadResponse) else "")] += 1
            if conn is not None:
                conn.close()
                conn = None
            await asyncio.sleep(0.01)
            continue
        if stats.phase == "measure" and end <= stats.window[1]:
            stats.completed += 1
            stats.statuses[status] += 1
            if start >= stats.window[0]:
                stats.latencies.append(end - start)
    if conn is not None:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def main_async(cfg: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=cfg.cafile)
    ctx.set_alpn_protocols(["h2"] if cfg.http == "2" else ["http/1.1"])
    bodies = [open(p, "rb").read() for p in cfg.body]
    stats = Stats()
    emit("ready")
    tasks = [asyncio.create_task(client(cfg, ctx, bodies, stats, i)) for i in range(cfg.concurrency)]
    await asyncio.sleep(cfg.warmup)
    cpu0, t0 = time.process_time(), time.perf_counter()
    stats.window = (t0, t0 + cfg.duration)
    stats.phase = "measure"
    emit("measure-start")
    await asyncio.sleep(cfg.duration)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats.phase = "done"
    emit("measure-end")
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 2)
    for t in pending:
        t.cancel()
    lat = stats.latencies
    emit("result", completed=stats.completed, ok=stats.statuses.get(200, 0), seconds=elapsed,
         rps=stats.statuses.get(200, 0) / elapsed,
         p50_ms=percentile(lat, 50) * 1000, p90_ms=percentile(lat, 90) * 1000, p99_ms=percentile(lat, 99) * 1000,
         max_ms=(max(lat) * 1000 if lat else float("nan")), latency_samples=len(lat),
         statuses={str(k): v for k, v in stats.statuses.items()}, errors=dict(stats.errors),
         connections=stats.connections, total_ok=stats.total_ok, client_cpu_s=cpu, pid=os.getpid())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True, help="the upstream's name (CONNECT target, SNI, Host)")
    p.add_argument("--connect-host", default="127.0.0.1", help="where to connect without a proxy")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--proxy", default="", help="HOST:PORT of the HTTP proxy, or empty for direct")
    p.add_argument("--cafile", required=True, help="the CA the client trusts (the proxy's, or the upstream's)")
    p.add_argument("--http", choices=["1.1", "2"], default="1.1")
    p.add_argument("--mode", choices=["keep-alive", "new-connection"], default="keep-alive")
    p.add_argument("--body", action="append", required=True, help="a request body file (repeat: used in turn)")
    p.add_argument("--path", default="/v1/ingest")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=1)
    cfg = p.parse_args()
    asyncio.run(main_async(cfg))


if __name__ == "__main__":
    main()
