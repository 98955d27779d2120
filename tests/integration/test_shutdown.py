"""SIGTERM: the proxy stops accepting, lets requests in flight finish, then exits."""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time

import httpx
import pytest

from tests.support.proxy import tollgate_run

pytestmark = pytest.mark.integration


def test_sigterm_lets_the_request_in_flight_finish(env, tmp_path):
    proxy = tollgate_run(tmp_path, env.policy).start()
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    result: dict = {}

    def slow_request() -> None:
        with httpx.Client(proxy=proxy.url, verify=verify, timeout=20) as c:
            try:
                result["status"] = c.get(f"https://api.allowed.test:{env.tls.port}/delay/2").status_code
            except Exception as e:  # reported below
                result["error"] = repr(e)

    try:
        thread = threading.Thread(target=slow_request)
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r.path == "/delay/2" for r in env.tls.requests):
            time.sleep(0.05)  # the request has reached the upstream: it is in flight
        proxy.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()
        thread.join(20)
        assert result == {"status": 200}
        assert proxy.proc.wait(15) == 0
        actions = [e["event"]["action"] for e in proxy.events()]
        assert actions[-1] == "proxy-stopped" and "request-allowed" in actions
    finally:
        proxy.stop()


def test_stop_with_idle_connections_open_prints_no_traceback(env, tmp_path):
    # Clients that keep their connections open across the stop (as a busy egress point has):
    # the console must say the proxy stopped, not show errors from the connections it closed.
    proxy = tollgate_run(tmp_path, env.policy).start()
    verify = ssl.create_default_context(cafile=str(proxy.root_ca))
    clients = [httpx.Client(proxy=proxy.url, verify=verify, timeout=10) for _ in range(4)]
    try:
        for c in clients:
            assert c.get(f"https://api.allowed.test:{env.tls.port}/kept").status_code == 200
        raw = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(4)]  # connected, silent
        proxy.proc.send_signal(signal.SIGTERM)
        assert proxy.proc.wait(30) == 0
        console = proxy.log_path.read_text()
        assert "Traceback" not in console and "CancelledError" not in console, console[-2000:]
        for s in raw:
            s.close()
    finally:
        for c in clients:
            c.close()
        proxy.stop()
