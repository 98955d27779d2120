"""Hook-level checks with mitmproxy's own test flows (no network)."""

from __future__ import annotations

import asyncio

from mitmproxy.test import taddons, tflow, tutils

from pathlib import Path

from tollgate.dlp.engine import Engine
from tollgate.gates.decision import Decision, Reason
from tollgate.mitm.addon import Approval, ConnState, Tollgate
from tollgate.mitm.runtime import Runtime
from tollgate.policy.loader import load_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "example.yaml"


def approved_addon(flow) -> Tollgate:
    """An addon with the example policy, as if the flow's connection had been allowed."""
    addon = Tollgate()
    policy = load_policy(EXAMPLE)
    addon.runtime = Runtime(policy, Engine.for_policy(policy.dlp), None, Path("unused.pem"))
    addon.hmac_key = b"k" * 32
    addon.audit = _ListAudit()
    rule = policy.destinations[0]
    addon.conns[flow.client_conn] = ConnState(runtime=addon.runtime, tunnel=Approval(
        "api.stripe.com", 443, "192.0.2.1", Decision(Reason.ALLOWED, "allowed", rule=rule)))
    return addon


def h2_post(headers: tuple = ()) -> object:
    request = tutils.treq(method=b"POST", http_version=b"HTTP/2.0", content=b"payload", headers=headers)
    request.headers.pop("content-length", None)
    flow = tflow.tflow(req=request)
    flow.metadata["tollgate"] = {"approved": True}
    return flow


def test_http2_body_without_length_gets_content_length():
    flow = h2_post()
    addon = approved_addon(flow)
    with taddons.context(addon):
        assert "content-length" not in flow.request.headers
        asyncio.run(addon.request(flow))
    assert flow.response is None
    assert flow.request.headers["content-length"] == "7"


def test_unapproved_request_is_blocked_even_if_no_gate_ran():
    addon = Tollgate()
    with taddons.context(addon):
        flow = tflow.tflow()
        addon.audit = _ListAudit()
        asyncio.run(addon.request(flow))
    assert flow.response.status_code == 503
    assert flow.response.headers["x-tollgate-decision"] == "internal_error"
    assert addon.audit.events[0]["event"]["action"] == "request-denied"


def test_audit_failure_blocks_and_says_so(tmp_path):
    from tollgate.audit.writer import AuditWriter

    flow = tflow.tflow()
    addon = approved_addon(flow)
    (tmp_path / "audit.jsonl").symlink_to("/dev/full")  # every write fails: ENOSPC
    addon.audit = AuditWriter(tmp_path / "audit.jsonl")
    flow.metadata["tollgate"] = {"approved": False}
    with taddons.context(addon):
        asyncio.run(addon.request(flow))
    assert flow.response.status_code == 503
    assert flow.response.headers["x-tollgate-decision"] == "audit_unavailable"


class _ListAudit:
    def __init__(self):
        self.events = []

    def write(self, event):
        self.events.append(event)

    def close(self):
        pass


def test_websocket_history_is_not_kept():
    from mitmproxy import websocket

    flow = tflow.twebsocketflow()
    addon = approved_addon(flow)
    for i in range(50):
        flow.websocket.messages.append(websocket.WebSocketMessage(1, True, f"message {i}".encode()))
        with taddons.context(addon):
            asyncio.run(addon.websocket_message(flow))
        assert len(flow.websocket.messages) == 1
    assert flow.websocket.messages[0].text == "message 49" and not flow.websocket.messages[0].dropped


def _slow(*_args):
    import time

    time.sleep(1)  # longer than the patched DLP_TIMEOUT


def test_a_request_scan_that_times_out_is_blocked_as_uninspectable(monkeypatch):
    from tollgate.mitm import addon as addon_module
    from tests.support.secrets import POSITIVE

    monkeypatch.setattr(addon_module, "DLP_TIMEOUT", 0.05)
    monkeypatch.setattr(addon_module, "inspect_request", _slow)
    # A body a detector could match: not clean at a glance, so it needs the full (slow) inspection.
    flow = tflow.tflow(req=tutils.treq(method=b"POST", content=('{"k": "%s"}' % POSITIVE["aws_access_key_id"][1]).encode()))
    flow.metadata["tollgate"] = {"approved": True}
    addon = approved_addon(flow)
    with taddons.context(addon):
        asyncio.run(addon.request(flow))
    assert flow.response is not None and flow.response.status_code == 403
    event = addon.audit.events[-1]
    assert event["event"]["action"] == "request-uninspectable"
    assert event["tollgate"]["dlp"] == {"uninspectable": "scan_timeout"}


def test_a_websocket_scan_that_times_out_drops_the_message(monkeypatch):
    from mitmproxy import websocket

    from tollgate.mitm import addon as addon_module
    from tests.support.secrets import POSITIVE

    monkeypatch.setattr(addon_module, "DLP_TIMEOUT", 0.05)
    monkeypatch.setattr(addon_module, "inspect_message", _slow)
    flow = tflow.twebsocketflow()
    addon = approved_addon(flow)
    flow.websocket.messages.append(websocket.WebSocketMessage(1, True, POSITIVE["aws_access_key_id"][1].encode()))
    with taddons.context(addon):
        asyncio.run(addon.websocket_message(flow))
    assert flow.websocket.messages[-1].dropped
    event = addon.audit.events[-1]
    assert event["event"]["action"] == "message-blocked"
    assert event["tollgate"]["dlp"]["uninspectable"] == "scan_timeout"


def streaming_addon(flow) -> Tollgate:
    """approved_addon, with dlp.large_bodies: stream and a 1 KiB max_body_bytes."""
    import dataclasses

    addon = approved_addon(flow)
    policy = addon.runtime.policy
    dlp = dataclasses.replace(policy.dlp, large_bodies="stream", max_body_bytes=1024, stream_max_bytes=10_000_000)
    policy = dataclasses.replace(policy, dlp=dlp)
    addon.runtime = Runtime(policy, Engine.for_policy(dlp), None, Path("unused.pem"))
    addon.conns[flow.client_conn].runtime = addon.runtime
    return addon


def test_stream_mode_installs_a_guard_only_for_bodies_over_the_limit():
    from tollgate.mitm.streaming import StreamGuard

    for length, streamed in ((1000, False), (5000, True)):
        flow = tflow.tflow(req=tutils.treq(method=b"POST", content=b"x" * length))
        flow.request.headers["content-length"] = str(length)
        addon = streaming_addon(flow)
        with taddons.context(addon):
            asyncio.run(addon.requestheaders(flow))
        assert flow.response is None
        assert isinstance(flow.request.stream, StreamGuard) is streamed, length


def test_an_http2_body_of_unknown_length_to_an_upstream_not_known_to_speak_http2_is_refused():
    flow = h2_post()
    flow.server_conn.state = 0  # not connected: the upstream's protocol is unknown
    addon = streaming_addon(flow)
    with taddons.context(addon):
        asyncio.run(addon.requestheaders(flow))
    assert flow.response.status_code == 403 and not flow.request.stream
    (event,) = [e for e in addon.audit.events if e["event"]["action"] == "request-uninspectable"]
    assert event["tollgate"]["dlp"]["uninspectable"] == "unframed_stream"
