"""The Tollgate mitmproxy addon: hooks that translate flows into gate calls and back.

No policy logic lives here. Each hook gathers facts from the flow, asks a gate in
``tollgate.gates``, turns the decision into a response (or a refused connection) and an
audit event. Every hook is wrapped by ``fail_closed``: an exception blocks the traffic
and is audited, because mitmproxy itself would log it and forward the flow unscanned.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ipaddress
import logging
import os
import signal
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.proxy import server_hooks
from OpenSSL import SSL, crypto

from tollgate.audit.events import decision_event, lifecycle_event, new_incident_id
from tollgate.audit.evidence import EvidenceError
from tollgate.audit.fingerprint import load_or_create_key
from tollgate.audit.writer import AuditError, AuditWriter
from tollgate.dlp.inspect import (Outcome, RequestFacts, clean_at_a_glance, inspect_message, inspect_request,
                                  request_clean_at_a_glance)
from tollgate.dlp.stream import StreamScanner
from tollgate.gates.address import ResolveError, choose_address, parse_ip_literal, resolve
from tollgate.gates.client import identify_client
from tollgate.gates.decision import Decision, Reason
from tollgate.gates.destination import decide_destination
from tollgate.gates.request import check_authorities, check_header_size, check_sni
from tollgate.metrics import Metrics
from tollgate.mitm import logfilter
from tollgate.mitm.hardening import review_options
from tollgate.mitm.memory import fix_mmap_threshold
from tollgate.mitm.responses import error_response
from tollgate.mitm.streaming import StreamGuard, cut_upstream
from tollgate.mitm.runtime import (ReloadError, Runtime, build_runtime, check_replaceable, cover_policy,
                                   file_signature)
from tollgate.policy.hosts import normalize_host
from tollgate.policy.loader import PolicyError
from tollgate.policy.model import Policy
from tollgate.tls.ca import CaError, load_status
from tollgate.tls.pins import CertFacts, chain_matches_pins, facts_of_der
from tollgate.ops_server import start_ops_server
from tollgate.tls.trust import TrustError

logger = logging.getLogger("tollgate")

TLS_VERSIONS = {"1.2": "TLS1_2", "1.3": "TLS1_3"}
DLP_TIMEOUT = 30.0  # seconds for one request's scan; longer is uninspectable, not a pass
# Content up to this size gets a first look on the event loop (prefilter passes only, linear,
# well under a millisecond for 64 KiB): most content is clean and stops there, which saves a
# thread hand-off that costs more than the look (GIL ping-pong with the event loop). The rest,
# where a detector could match and validators and parsing may take long, goes to a thread.
GLANCE_BYTES = 64 * 1024
WATCH_SETTLE = 0.3  # seconds a changed policy file must stay unchanged before it is reloaded


@dataclass
class Approval:
    """A destination the policy allowed for one client connection, pinned to a vetted IP."""

    host: str  # normalised name, or the IP literal as given
    port: int
    ip: str
    decision: Decision

    @property
    def is_ip(self) -> bool:
        return self.host == self.ip or _is_ip(self.host)

    def covers(self, address: tuple[str, int]) -> bool:
        host, port = address
        return port == self.port and (host == self.ip or _same_name(host, self.host))


@dataclass
class ConnState:
    """What Tollgate knows about one client connection."""

    runtime: Runtime | None = None  # the policy the connection started under; kept across reloads
    tunnel: Approval | None = None  # set by an allowed CONNECT
    plain: dict[tuple[str, int], Approval] = field(default_factory=dict)  # plain-HTTP destinations
    tls_refused: bool = False
    upstream_chain: dict[int, CertFacts] = field(default_factory=dict)  # depth → facts, as verified
    pin_mismatch: bool = False
    upstream_failure: Decision | None = None  # answers every request of the tunnel with a 502

    def approval_for(self, address: tuple[str, int] | None) -> Approval | None:
        if not address:
            return None
        candidates = ([self.tunnel] if self.tunnel else []) + list(self.plain.values())
        return next((a for a in candidates if a.covers(address)), None)


async def in_thread(inspect: Callable, *args: Any) -> Any:
    """A full DLP inspection off the event loop; one that outlasts DLP_TIMEOUT raises
    asyncio.TimeoutError instead of holding the request."""
    return await asyncio.wait_for(asyncio.to_thread(inspect, *args), DLP_TIMEOUT)


def _stream_facts(guard: Any) -> dict[str, int]:
    """How much of a streamed body came in and went out, for its audit event."""
    if not isinstance(guard, StreamGuard):
        return {}
    return {"received_bytes": guard.scanner.received, "forwarded_bytes": guard.scanner.forwarded}


def scan_timed_out() -> Outcome:
    """A scan that outlasted DLP_TIMEOUT: the content was not inspected, so it is not forwarded."""
    return Outcome("uninspectable", uninspectable="scan_timeout", message="the scan took too long")


def fail_closed(kind: str) -> Callable:
    """Wrap a hook so that any exception refuses the traffic it was handling."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        async def wrapper(self: "Tollgate", data: Any) -> None:
            try:
                result = fn(self, data)
                if inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                raise
            except Exception as e:
                # Type and stack only: an exception's message may quote request data.
                frames = "".join(traceback.format_tb(e.__traceback__))
                logger.error("tollgate: %s hook failed (%s); refusing the traffic\n%s", fn.__name__,
                             type(e).__name__, frames)
                self._refuse_after_error(kind, data, fn.__name__, e)
                if kind == "tls":
                    raise exceptions.AddonHalt()

        return wrapper

    return decorate


class Tollgate:
    name = "tollgate"

    def __init__(self) -> None:
        self.runtime: Runtime | None = None  # for new connections; swapped whole on reload
        self.audit: AuditWriter | None = None
        self.conns: weakref.WeakKeyDictionary[connection.Client, ConnState] = weakref.WeakKeyDictionary()
        self.own_endpoints: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, int]] = []
        self.hmac_key: bytes = b""
        self._reload_lock = asyncio.Lock()
        self._watched: tuple[int, int, int] | None = None  # the policy file's signature when last read
        self._intermediate = ""  # SHA-256 of the intermediate CA mitmproxy signs with
        self._watcher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.metrics = Metrics()
        self._audit_ok = True  # the last audit write succeeded
        self._ops_server: asyncio.Server | None = None
        self._log_filter: logfilter.ProtocolErrorFilter | None = None
        self.in_flight: set[str] = set()  # ids of requests not yet answered: a graceful stop waits for them
        self.metrics.in_flight.set_function(lambda: len(self.in_flight))
        self.metrics.connections.set_function(lambda: len(self.conns))

    @property
    def policy(self) -> Policy | None:
        return self.runtime.policy if self.runtime else None

    # --- lifecycle --------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        fix_mmap_threshold()  # RSS flat under sustained load (see tollgate/mitm/memory.py)
        loader.add_option("tollgate_policy", str, "", "Tollgate policy file, e.g. policies/example.yaml")
        loader.add_option("tollgate_audit_path", str, "",
                          "Audit log file; default: the policy's audit.path, e.g. var/audit/audit.jsonl")
        loader.add_option("tollgate_reload_interval", float, 1.0,
                          "Seconds between checks of the policy file for changes (0: reload on SIGHUP only)")
        loader.add_option("tollgate_metrics_listen", str, "",
                          "HOST:PORT for GET /metrics (Prometheus) and GET /healthz; empty: off")

    def configure(self, updated: set[str]) -> None:
        changes, errors = review_options({k: getattr(ctx.options, k) for k in updated if k in ctx.options})
        if errors:
            raise exceptions.OptionsError("; ".join(errors))
        if changes:
            logger.warning("tollgate: forcing safe mitmproxy options: %s",
                           ", ".join(f"{k}={v}" for k, v in changes.items()))
            ctx.options.update(**changes)
        if {"tollgate_policy", "tollgate_audit_path", "confdir"} & updated:
            self._load_policy()

    def _load_policy(self) -> None:
        path = ctx.options.tollgate_policy
        if not path:
            return  # `running` refuses to serve without a policy
        confdir = Path(ctx.options.confdir).expanduser()
        try:
            runtime = build_runtime(path, confdir)
            hmac_key = load_or_create_key(confdir)
        except PolicyError as e:
            raise exceptions.OptionsError(f"policy {path} is invalid:\n{e}") from None
        except (CaError, TrustError, EvidenceError, OSError) as e:
            raise exceptions.OptionsError(str(e)) from None
        policy = runtime.policy
        try:  # opened last: nothing after it can fail and leave it open
            audit = AuditWriter(ctx.options.tollgate_audit_path or policy.audit.path, policy.audit.rotate_bytes)
        except AuditError as e:
            raise exceptions.OptionsError(str(e)) from None
        self._apply_options(runtime)
        old_audit, self.runtime, self.audit, self.hmac_key = self.audit, runtime, audit, hmac_key
        if old_audit:
            old_audit.close()
        self._watched = file_signature(path)
        self._intermediate = load_status(confdir).intermediate_sha256
        self._write(lifecycle_event("policy-loaded", f"policy {path} loaded", policy={"path": path, "sha256": policy.sha256}))

    def _apply_options(self, runtime: Runtime) -> None:
        """The mitmproxy options a policy sets; they apply to upstream handshakes made from now on."""
        ctx.options.update(
            ssl_verify_upstream_trusted_ca=str(runtime.trust_bundle),
            tls_version_server_min=TLS_VERSIONS[runtime.policy.upstream.min_tls_version],
            # A hard cap on what mitmproxy buffers (or, with large_bodies: stream, on a declared
            # length); a Content-Length above the policy's limit is refused earlier, in
            # requestheaders, with a JSON answer. Streamed bodies are capped by the scanner.
            body_size_limit=str(runtime.policy.dlp.largest_body_bytes + 1024 * 1024),
        )

    # --- hot reload -------------------------------------------------------------------

    async def reload(self, trigger: str) -> bool:
        """Validate the policy file fully, then swap it in whole; a bad file changes nothing.
        New connections get the new policy; open connections keep theirs."""
        async with self._reload_lock:
            path, old = ctx.options.tollgate_policy, self.runtime
            if old is None:
                return False
            self._watched = file_signature(path)
            confdir = Path(ctx.options.confdir).expanduser()
            try:
                runtime = await asyncio.to_thread(build_runtime, path, confdir, False)
                check_replaceable(old.policy, runtime.policy, ctx.options.tollgate_audit_path)
                # Last, as nothing after it can fail: a new intermediate if the policy intercepts new names.
                intermediate = await asyncio.to_thread(cover_policy, confdir, runtime.policy)
            except Exception as e:  # whatever went wrong, the running policy stays
                if isinstance(e, (PolicyError, CaError, TrustError, EvidenceError, ReloadError)):
                    error = str(e)
                elif isinstance(e, OSError):
                    error = f"{type(e).__name__}: {e}"
                else:
                    logger.exception("tollgate: unexpected error while reloading the policy")
                    error = f"internal error ({type(e).__name__}); see the console log"
                logger.error("tollgate: policy %s not reloaded (%s); the running policy stays in force:\n%s",
                             path, trigger, error)
                self._write(lifecycle_event(
                    "policy-reload-failed", f"policy {path} was not reloaded; the running policy stays in force",
                    outcome="failure", trigger=trigger, error=error,
                    policy={"path": path, "sha256": old.policy.sha256}))
                return False
            if runtime.policy.sha256 == old.policy.sha256:
                return True  # touched, not changed
            renewed = intermediate != self._intermediate
            if renewed:  # this process or another worker issued a new intermediate: sign with it
                ctx.master.addons.get("tlsconfig").configure({"confdir"})  # reloads the CA files
                self._intermediate = intermediate
            self._apply_options(runtime)
            self.runtime = runtime
            logger.warning("tollgate: policy %s reloaded (%s): %s → %s", path, trigger,
                           old.policy.sha256[:12], runtime.policy.sha256[:12])
            self._write(lifecycle_event(
                "policy-reloaded", f"policy {path} reloaded; new connections use it", trigger=trigger,
                ca_renewed=renewed,
                policy={"path": path, "sha256": runtime.policy.sha256, "previous_sha256": old.policy.sha256}))
            return True

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, interval: float) -> None:
        """Poll the policy file; reload once a change has settled (editors write in steps)."""
        path = ctx.options.tollgate_policy
        while True:
            await asyncio.sleep(interval)
            seen = file_signature(path)
            if seen == self._watched:
                continue
            await asyncio.sleep(WATCH_SETTLE)
            if file_signature(path) != seen:
                continue  # still being written: look again next time
            try:
                await self.reload("file-changed")
            except Exception:
                logger.exception("tollgate: policy reload failed; the running policy stays in force")

    async def running(self) -> None:
        if self.runtime is None:
            # An error logged during start-up makes mitmproxy exit (errorcheck addon).
            logger.error("tollgate: no policy loaded; set it with --set tollgate_policy=policies/example.yaml")
            return
        proxyserver = ctx.master.addons.get("proxyserver")
        addrs = proxyserver.listen_addrs() if proxyserver else []
        self.own_endpoints = []
        for host, port, *_ in addrs:
            ip = ipaddress.ip_address(host)
            self.own_endpoints.append((None if ip.is_unspecified else ip, port))
        listen = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p, *_ in addrs]
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("sighup")))
        except (NotImplementedError, RuntimeError, ValueError):
            logger.warning("tollgate: no SIGHUP handler here; the policy file is still watched")
        if ctx.options.tollgate_reload_interval > 0 and self._watcher is None:
            self._watcher = loop.create_task(self._watch(ctx.options.tollgate_reload_interval))
        if ctx.options.tollgate_metrics_listen and self._ops_server is None:
            from tollgate.cli import parse_listen

            ops_host, ops_port = parse_listen(ctx.options.tollgate_metrics_listen)
            self._ops_server = await start_ops_server(ops_host, ops_port, self.metrics, self.health)
            bound = self._ops_server.sockets[0].getsockname()
            print(f"tollgate: metrics and health on http://{bound[0]}:{bound[1]}/metrics and /healthz", flush=True)
        if self._log_filter is None:
            self._log_filter = logfilter.install(self._protocol_error)
        self._write(lifecycle_event("proxy-started", "Tollgate is running", listen=listen))
        # Printed, not logged: scripts and tests wait for this line whatever the log level.
        print(f"tollgate: listening on {', '.join(listen)}", flush=True)

    def health(self) -> list[str]:
        """What makes the proxy unusable right now: no policy, or an audit log it cannot write."""
        problems = []
        if self.runtime is None:
            problems.append("no policy is loaded")
        if self.audit is None:
            problems.append("the audit log is not open")
        elif not self._audit_ok:
            problems.append("the last audit write failed: traffic is refused")
        elif not os.access(self.audit.path, os.W_OK):
            problems.append(f"the audit log {self.audit.path} is not writable")
        return problems

    def _protocol_error(self, peername: tuple | None, kind: str) -> None:
        """mitmproxy answered a client's unparseable request itself (no flow, no hook): audit it."""
        source = _peer_address(peername) if peername else None
        self._write(decision_event("request-error", Decision(Reason.TRANSPORT_ERROR, f"client protocol error: {kind}"),
                                   stage="transport", source=source))

    def done(self) -> None:
        if self._log_filter:
            logfilter.uninstall(self._log_filter)
            self._log_filter = None
        if self._ops_server:
            self._ops_server.close()
            self._ops_server = None
        if self._watcher:
            self._watcher.cancel()
            self._watcher = None
        if self.audit:
            try:
                self._write(lifecycle_event("proxy-stopped", "Tollgate stopped"))
            finally:
                self.audit.close()
                self.audit = None

    # --- stage 1+2: CONNECT -----------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        self._state(client)  # the connection keeps the policy in force now, whatever reloads follow

    @fail_closed("http")
    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return  # e.g. proxyauth already answered 407
        approval = await self._admit(flow, flow.request.host, flow.request.port, "connection")
        if approval:
            self._state(flow.client_conn).tunnel = approval

    # --- stage 3: the last gate before a socket is opened ---------------------------

    @fail_closed("server")
    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        state = self.conns.get(data.client)
        address = data.server.address
        approval = state.approval_for(address) if state else None
        if approval is None:
            decision = Decision(Reason.UNAPPROVED_CONNECTION, "no policy decision approved this upstream connection")
            data.server.error = f"tollgate: {decision.message}"
            self._write(decision_event("upstream-refused", decision, stage="address", source=_peer(data.client),
                                       host=address[0] if address else None, port=address[1] if address else None))
            return
        # DNS pinning: connect to the address that was vetted, verify TLS against the name.
        data.server.address = (approval.ip, approval.port)
        if not approval.is_ip:
            data.server.sni = approval.host

    # --- stage 4: TLS -----------------------------------------------------------------

    @fail_closed("tls")
    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        state = self.conns.get(data.context.client)
        tunnel = state.tunnel if state else None
        if tunnel is None:
            self._refuse_tls(data.context.client, Decision(Reason.NOT_VIA_PROXY, "TLS without an allowed CONNECT"), None)
        # No rule: an unlisted destination let through by report-only mode. The CA may not sign
        # its name, so it is tunnelled, never decrypted.
        passthrough = tunnel.decision.rule is None or tunnel.decision.rule.mode == "passthrough"
        refusal = check_sni(tunnel.host, data.client_hello.sni, passthrough=passthrough, is_ip=tunnel.is_ip)
        if refusal:
            refusal = Decision(refusal.reason, refusal.message, rule=tunnel.decision.rule, client=tunnel.decision.client)
            self._refuse_tls(data.context.client, refusal, tunnel)
        if passthrough:
            data.ignore_connection = True  # SNI == CONNECT host was just checked
            self._write(decision_event("tunnel-passthrough", tunnel.decision, stage="tls",
                                       source=_peer(data.context.client), host=tunnel.host, port=tunnel.port, ip=tunnel.ip))

    @fail_closed("tls")
    def tls_start_client(self, data: tls.TlsData) -> None:
        state = self.conns.get(data.context.client)
        if state is None or state.tunnel is None or state.tls_refused:
            raise exceptions.AddonHalt()  # no ssl_conn: mitmproxy fails the client handshake

    def _refuse_tls(self, client: connection.Client, decision: Decision, tunnel: Approval | None) -> None:
        self._state(client).tls_refused = True
        self._write(decision_event("tls-denied", decision, stage="tls", source=_peer(client),
                                   host=tunnel.host if tunnel else None, port=tunnel.port if tunnel else None,
                                   incident=new_incident_id()))
        raise exceptions.AddonHalt()

    @fail_closed("tls")
    def tls_start_server(self, data: tls.TlsData) -> None:
        """Build mitmproxy's upstream TLS connection, then add our checks to its verification.

        OpenSSL still verifies chain, expiry and hostname (against the destination name set
        in server_connect); our callback keeps that verdict, records the chain for the audit
        log and, for pinned destinations, requires a pinned key somewhere in the chain.
        """
        state = self._state(data.context.client)
        approval = state.approval_for(data.conn.address)
        if approval is None:
            raise RuntimeError("upstream TLS for a connection no decision approved")
        ctx.master.addons.get("tlsconfig").tls_start_server(data)
        if data.ssl_conn is None:
            raise RuntimeError("mitmproxy built no upstream TLS connection")
        pins = approval.decision.rule.pins if approval.decision.rule else ()
        state.upstream_chain, state.pin_mismatch = {}, False

        def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            try:
                facts = facts_of_der(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))
                state.upstream_chain[depth] = facts
                if not ok:
                    return False
                if depth == 0 and pins and not chain_matches_pins([f.spki for f in state.upstream_chain.values()], pins):
                    state.pin_mismatch = True
                    return False
                return True
            except Exception:
                logger.exception("tollgate: upstream certificate check failed; refusing")
                return False  # an exception in OpenSSL's callback must never mean "verified"

        data.ssl_conn.set_verify(SSL.VERIFY_PEER, verify)

    @fail_closed("tls")
    def tls_failed_server(self, data: tls.TlsData) -> None:
        state = self._state(data.context.client)
        approval = state.approval_for(data.conn.address)
        error = str(data.conn.error or "TLS handshake failed")
        if state.pin_mismatch:
            reason, message = Reason.UPSTREAM_PIN_MISMATCH, "no certificate in the upstream chain matches the destination's pins"
        elif error.startswith("Certificate verify failed"):
            reason, message = Reason.UPSTREAM_CERTIFICATE_INVALID, f"upstream certificate rejected: {error.split(': ', 1)[-1]}"
        else:
            reason, message = Reason.UPSTREAM_TLS_FAILED, f"TLS with the upstream failed: {error}"
        decision = Decision(reason, message, rule=approval.decision.rule if approval else None,
                            client=approval.decision.client if approval else None)
        state.upstream_failure = decision
        leaf = state.upstream_chain.get(0) or next(iter(state.upstream_chain.values()), None)
        extra = {"upstream_chain": [f.ecs() for _, f in sorted(state.upstream_chain.items())]}
        event = decision_event("upstream-tls-failed", decision, stage="tls", source=_peer(data.context.client),
                               host=approval.host if approval else None, port=approval.port if approval else None,
                               ip=approval.ip if approval else None, extra=extra)
        if leaf:
            event["tls"] = {"server": {"x509": leaf.ecs()}}
        self._write(event)

    # --- stage 5: requests ------------------------------------------------------------

    @fail_closed("http")
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight.add(flow.id)
        if flow.response or flow.error:
            return
        state = self.conns.get(flow.client_conn)
        tunnel = state.tunnel if state else None
        too_large = check_header_size(flow.request.headers.fields)
        if too_large:
            self._deny(flow, too_large, "request-denied", "request", flow.request.host, flow.request.port)
            return
        hosts = flow.request.headers.get_all("host")
        if tunnel is not None:
            if state.upstream_failure:
                # The client's TLS completed (eager mode), but the upstream was refused.
                self._deny(flow, state.upstream_failure, "request-denied", "tls", tunnel.host, tunnel.port)
                return
            refusal = check_authorities(tunnel.host, tunnel.port, hosts, flow.request.authority or None)
            if refusal:
                decision = Decision(refusal.reason, refusal.message, rule=tunnel.decision.rule, client=tunnel.decision.client)
                self._deny(flow, decision, "request-denied", "request", tunnel.host, tunnel.port)
                return
            self._approve(flow, tunnel)
            await self._plan_body(flow, tunnel)
            return
        # A plain-HTTP proxy request: the absolute URL names the destination.
        refusal = check_authorities(flow.request.host, flow.request.port, hosts, None)
        if refusal:
            self._deny(flow, refusal, "request-denied", "request", flow.request.host, flow.request.port)
            return
        approval = await self._admit(flow, flow.request.host, flow.request.port, "request")
        if approval:
            self._state(flow.client_conn).plain[(approval.host, approval.port)] = approval
            self._approve(flow, approval)
            await self._plan_body(flow, approval)

    @fail_closed("http")
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or flow.metadata.get("tollgate", {}).get("cut"):
            return  # (a cut stream was audited when it was cut)
        # Positive approval: a request that no gate approved is never forwarded.
        if flow.metadata.get("tollgate", {}).get("approved") is not True:
            self._deny(flow, Decision(Reason.INTERNAL_ERROR, "the request was not approved by the policy"),
                       "request-denied", "request", flow.request.host, flow.request.port)
            return
        headers = flow.request.headers
        if flow.request.is_http2 and flow.request.raw_content and "content-length" not in headers \
                and "transfer-encoding" not in headers:
            # mitmproxy 11.0.2 forwards such an HTTP/2 body to an HTTP/1.1 upstream with neither
            # header: the upstream reads an empty body and the bytes desync the connection.
            headers["content-length"] = str(len(flow.request.raw_content))
        if isinstance(flow.request.stream, StreamGuard):
            self._finish_stream(flow, flow.request.stream)
            return
        await self._inspect(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        # Bookkeeping only: never raises into mitmproxy (a missing timestamp just skips the sample).
        self.in_flight.discard(flow.id)
        start, end = flow.request.timestamp_start, flow.response.timestamp_end if flow.response else None
        if start and end:
            forwarded = flow.metadata.get("tollgate", {}).get("approved") is True
            self.metrics.request_seconds.labels("forwarded" if forwarded else "refused").observe(max(0.0, end - start))

    @fail_closed("http")
    def error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy answered a protocol or connection error itself (HTML 400/502): audit it."""
        self.in_flight.discard(flow.id)
        if flow.error is None or flow.metadata.get("tollgate", {}).get("cut"):
            return  # a stream Tollgate cut was audited when it was cut
        # Only the text before the first colon: details may quote raw request bytes.
        kind = flow.error.msg.split(":", 1)[0][:120]
        tunnel = self._tunnel(flow)
        decision = Decision(Reason.TRANSPORT_ERROR, kind, rule=tunnel.decision.rule if tunnel else None,
                            client=tunnel.decision.client if tunnel else None)
        self._write(decision_event("request-error", decision, stage="transport", source=_peer(flow.client_conn),
                                   host=tunnel.host if tunnel else flow.request.host,
                                   port=tunnel.port if tunnel else flow.request.port, method=flow.request.method))

    # --- stage 6: DLP -----------------------------------------------------------------

    async def _plan_body(self, flow: http.HTTPFlow, approval: Approval) -> None:
        """A body over dlp.max_body_bytes is refused before it is read or, with
        large_bodies: stream, scanned as it passes. So is a body of unknown length in stream
        mode: mitmproxy would otherwise buffer it up to the stream cap."""
        dlp = self._runtime(flow).policy.dlp
        declared = flow.request.headers.get("content-length", "")
        if dlp.large_bodies == "stream" and declared.isdigit() and int(declared) <= dlp.max_body_bytes:
            return  # buffered and inspected whole, as usual
        limit = dlp.largest_body_bytes
        if declared.isdigit() and int(declared) > limit:
            if dlp.uninspectable == "block":  # a memory safeguard: enforced in report-only mode too
                what = "dlp.stream_max_bytes" if dlp.large_bodies == "stream" else "dlp.max_body_bytes"
                self._deny(flow, Decision(Reason.BODY_TOO_LARGE, f"the body is larger than the {limit}-byte limit "
                                          f"({what}) and cannot be inspected", rule=approval.decision.rule,
                                          client=approval.decision.client),
                           "request-uninspectable", "dlp", approval.host, approval.port)
            return
        if dlp.large_bodies == "stream" and (declared or flow.request.is_http2 or "transfer-encoding" in flow.request.headers):
            await self._start_stream_scan(flow, approval)  # (an HTTP/1.1 request with neither header has no body)

    async def _start_stream_scan(self, flow: http.HTTPFlow, approval: Approval) -> None:
        """Inspect the path and headers now (they go out when the stream starts), then hand
        the body to a StreamGuard."""
        runtime = self._runtime(flow)
        report_only = runtime.policy.report_only(approval.decision.rule)
        head = self._facts(flow, approval)._replace(body=b"", content_encoding="")
        outcome = await self._inspect_facts(runtime, head, report_only)
        block_uninspectable = runtime.policy.dlp.uninspectable == "block"
        self._apply_outcome(flow, approval, outcome, block_uninspectable, report_only, keep_body=True)
        if flow.response:
            return
        if flow.request.is_http2 and "content-length" not in flow.request.headers and not (
                flow.server_conn.connected and flow.server_conn.alpn == b"h2"):
            # mitmproxy 11.0.2 would stream an HTTP/2 body of unknown length to an HTTP/1.1
            # upstream with no framing at all. The tunnel mirrors the upstream's protocol, so
            # this is only an upstream reconnected in between: refused, never desynchronised.
            self._apply_outcome(flow, approval, Outcome(
                "uninspectable", uninspectable="unframed_stream",
                message="an HTTP/2 body without content-length to an upstream not known to speak HTTP/2"),
                True, False)
            return
        scanner = StreamScanner(runtime.engine, runtime.policy.dlp, self.hmac_key, approval.host,
                                approval.decision.rule, flow.request.headers.get("content-encoding", ""),
                                flow.request.headers.get("content-type", ""), runtime.evidence_key, report_only)
        if scanner.stopped is not None:
            # It cannot be scanned at all (its encoding or charset): refused before a byte goes
            # out, or, if the policy only reports, streamed unscanned.
            self._apply_outcome(flow, approval, scanner.stopped, block_uninspectable, report_only)
            if flow.response:
                return
            scanner.pass_rest()
        guard = StreamGuard(
            scanner,
            on_stop=lambda stopped: self._stream_stopped(flow, approval, stopped, block_uninspectable, report_only),
            on_error=lambda: self._stream_failed(flow, approval))
        flow.request.stream = guard

    def _stream_stopped(self, flow: http.HTTPFlow, approval: Approval, outcome: Outcome, block_uninspectable: bool,
                        report_only: bool) -> bool:
        """The scanner stopped a stream: audit it, and cut it unless the policy only reports.
        True when the rest goes out (report)."""
        self._apply_outcome(flow, approval, outcome, block_uninspectable, report_only, streamed=flow.request.stream)
        return not flow.metadata.get("tollgate", {}).get("cut")

    def _stream_failed(self, flow: http.HTTPFlow, approval: Approval) -> None:
        decision = Decision(Reason.INTERNAL_ERROR, "internal error in the dlp stage; the request was cut",
                            rule=approval.decision.rule, client=approval.decision.client)
        self._refuse_stream(flow, approval, "request-denied", decision, {})

    def _refuse_stream(self, flow: http.HTTPFlow, approval: Approval, action: str, decision: Decision,
                       extra: dict[str, Any]) -> None:
        """A streamed request may not go on: cut its upstream connection (the client gets
        mitmproxy's 502), then audit. The bytes already forwarded were scanned and clean."""
        flow.metadata.setdefault("tollgate", {}).update(approved=False, cut=True, reason=decision.reason.value)
        closed = cut_upstream(flow)
        extra = {**extra, "stream": {**_stream_facts(flow.request.stream), "upstream_closed": closed}}
        self._audit_flow(flow, approval, action, decision, extra, incident=new_incident_id())

    def _finish_stream(self, flow: http.HTTPFlow, guard: StreamGuard) -> None:
        """The end of a streamed body (the request hook): audit what it carried."""
        if not guard.used or guard.failed or guard.scanner.stopped is not None:
            return  # no body (path and headers were inspected already), or audited when it stopped
        runtime = self._runtime(flow)
        approval = self._approval_of(flow)
        if approval is None:
            raise RuntimeError("DLP without an approved destination")
        self._apply_outcome(flow, approval, guard.scanner.outcome(), runtime.policy.dlp.uninspectable == "block",
                            runtime.policy.report_only(approval.decision.rule), streamed=guard)

    def _runtime(self, flow: http.HTTPFlow) -> Runtime:
        state = self.conns.get(flow.client_conn)
        if state is None or state.runtime is None:
            raise RuntimeError("a flow on a connection without a policy")
        return state.runtime

    async def _inspect(self, flow: http.HTTPFlow) -> None:
        approval = self._approval_of(flow)
        if approval is None:
            raise RuntimeError("DLP without an approved destination")
        runtime = self._runtime(flow)
        report_only = runtime.policy.report_only(approval.decision.rule)
        started = time.monotonic()
        outcome = await self._inspect_facts(runtime, self._facts(flow, approval), report_only)
        self.metrics.scan_seconds.observe(time.monotonic() - started)
        self._apply_outcome(flow, approval, outcome, runtime.policy.dlp.uninspectable == "block", report_only)

    async def _inspect_facts(self, runtime: Runtime, facts: RequestFacts, report_only: bool) -> Outcome:
        """The glance on the event loop where it is enough, else a full inspection in a thread."""
        try:
            if len(facts.body) <= GLANCE_BYTES and request_clean_at_a_glance(runtime.engine, runtime.policy.dlp, facts):
                return Outcome("allow")
            return await in_thread(inspect_request, runtime.engine, runtime.policy.dlp, self.hmac_key, facts,
                                   runtime.evidence_key, report_only)
        except asyncio.TimeoutError:
            return scan_timed_out()

    @staticmethod
    def _facts(flow: http.HTTPFlow, approval: Approval) -> RequestFacts:
        return RequestFacts(
            path=flow.request.path, headers=list(flow.request.headers.items(multi=True)),
            body=flow.request.raw_content or b"", content_encoding=flow.request.headers.get("content-encoding", ""),
            content_type=flow.request.headers.get("content-type", ""), host=approval.host,
            destination=approval.decision.rule)

    def _apply_outcome(self, flow: http.HTTPFlow, approval: Approval, outcome: Outcome, block_uninspectable: bool,
                       report_only: bool, keep_body: bool = False, streamed: StreamGuard | None = None) -> None:
        """Act on an inspection's outcome. keep_body: only the path and headers were inspected
        (a stream follows). streamed: the body is passing through that guard: a refusal cuts it."""
        rule, client = approval.decision.rule, approval.decision.client
        extra: dict[str, Any] = {"dlp": {"findings": outcome.findings}} if outcome.findings else {}
        if streamed is not None:
            extra["stream"] = _stream_facts(streamed)
        if outcome.would:
            extra.setdefault("dlp", {})["would"] = outcome.would
        if outcome.action == "uninspectable":
            extra = {**extra, "dlp": {"uninspectable": outcome.uninspectable}}
            decision = Decision(Reason.BODY_TOO_LARGE if outcome.uninspectable == "too_large" else Reason.UNINSPECTABLE,
                                f"the request cannot be inspected: {outcome.message}", rule=rule, client=client)
            if block_uninspectable and not report_only:
                if streamed is not None:
                    self._refuse_stream(flow, approval, "request-uninspectable", decision, extra)
                else:
                    self._deny(flow, decision, "request-uninspectable", "dlp", approval.host, approval.port, extra=extra)
                return
            if streamed is not None:  # written when scanning stopped: what follows goes out unscanned
                extra["stream"]["rest_unscanned"] = True
            if block_uninspectable:
                extra["dlp"]["would"] = "block"
                self._audit_flow(flow, approval, "request-would-block", decision, extra, enforced=False)
            else:
                self._audit_flow(flow, approval, "request-uninspectable", decision, extra)
            return
        detectors = outcome.decision.detectors if outcome.decision else []
        if outcome.action == "block":
            decision = Decision(Reason.DLP_BLOCKED, "the request carries data that may not leave: " + ", ".join(detectors),
                                rule=rule, client=client)
            if streamed is not None:
                self._refuse_stream(flow, approval, "request-blocked", decision, extra)
            else:
                self._deny(flow, decision, "request-blocked", "dlp", approval.host, approval.port, extra=extra,
                           detectors=detectors)
        elif outcome.action == "redact":
            flow.request.path = outcome.path
            flow.request.headers = http.Headers([(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                                                 for k, v in outcome.headers])
            if not keep_body:
                flow.request.content = outcome.body  # re-encodes with Content-Encoding, fixes Content-Length
            self._audit_flow(flow, approval, "request-redacted",
                             Decision(Reason.ALLOWED, "forwarded with " + ", ".join(detectors) + " redacted", rule=rule,
                                      client=client), extra)
        elif outcome.action == "report" and outcome.would:
            self._audit_flow(flow, approval, f"request-would-{outcome.would}", Decision(
                Reason.DLP_BLOCKED if outcome.would == "block" else Reason.ALLOWED,
                f"report-only: forwarded unchanged; would {outcome.would}: " + ", ".join(detectors),
                rule=rule, client=client), extra, enforced=False)
        elif outcome.action == "report":
            self._audit_flow(flow, approval, "request-reported",
                             Decision(Reason.ALLOWED, "forwarded; findings reported: " + ", ".join(detectors), rule=rule,
                                      client=client), extra)

    @fail_closed("ws")
    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        message = flow.websocket.messages[-1]
        # mitmproxy keeps every message of a connection; only this one is needed (it forwards
        # the message object it holds, not the list): memory stays flat on long connections.
        del flow.websocket.messages[:-1]
        if not message.from_client:
            return
        approval = self._approval_of(flow)
        if approval is None:
            raise RuntimeError("WebSocket message without an approved destination")
        runtime = self._runtime(flow)
        report_only = runtime.policy.report_only(approval.decision.rule)
        text = message.text if message.is_text else message.content.decode("latin-1")
        try:
            if len(text) <= GLANCE_BYTES and clean_at_a_glance(runtime.engine, text):
                outcome, redacted = Outcome("allow"), text
            else:
                outcome, redacted = await in_thread(inspect_message, runtime.engine, runtime.policy.dlp,
                                                    self.hmac_key, text, approval.host, approval.decision.rule,
                                                    runtime.evidence_key, report_only)
        except asyncio.TimeoutError:
            outcome, redacted = scan_timed_out(), text
        extra: dict[str, Any] = {"dlp": {"findings": outcome.findings}, "websocket": True}
        if outcome.uninspectable:
            extra["dlp"]["uninspectable"] = outcome.uninspectable
        if outcome.would:
            extra["dlp"]["would"] = outcome.would
        detectors = outcome.decision.detectors if outcome.decision else []
        rule, client = approval.decision.rule, approval.decision.client
        if report_only and outcome.action == "uninspectable":
            extra["dlp"]["would"] = "block"
            self._audit_flow(flow, approval, "message-would-block", Decision(
                Reason.UNINSPECTABLE, "report-only: WebSocket message forwarded; would drop it: uninspectable",
                rule=rule, client=client), extra, enforced=False)
        elif outcome.action in ("block", "uninspectable") or (outcome.action == "redact" and not message.is_text):
            message.drop()  # a WebSocket cannot be answered with a 403: the message is not forwarded
            self._audit_flow(flow, approval, "message-blocked", Decision(
                Reason.DLP_BLOCKED, "WebSocket message dropped: " + ", ".join(detectors or ["uninspectable"]),
                rule=rule, client=client), extra, incident=new_incident_id())
        elif outcome.action == "redact":
            message.text = redacted
            self._audit_flow(flow, approval, "message-redacted", Decision(
                Reason.ALLOWED, "WebSocket message forwarded with " + ", ".join(detectors) + " redacted",
                rule=rule, client=client), extra)
        elif outcome.action == "report" and outcome.would:
            self._audit_flow(flow, approval, f"message-would-{outcome.would}", Decision(
                Reason.DLP_BLOCKED if outcome.would == "block" else Reason.ALLOWED,
                f"report-only: WebSocket message forwarded unchanged; would {outcome.would}: " + ", ".join(detectors),
                rule=rule, client=client), extra, enforced=False)
        elif outcome.action == "report":
            self._audit_flow(flow, approval, "message-reported", Decision(
                Reason.ALLOWED, "WebSocket message forwarded; findings reported", rule=rule, client=client), extra)

    def _approval_of(self, flow: http.HTTPFlow) -> Approval | None:
        state = self.conns.get(flow.client_conn)
        if state is None:
            return None
        if state.tunnel is not None:
            return state.tunnel
        return state.approval_for((flow.request.host, flow.request.port))

    def _audit_flow(self, flow: http.HTTPFlow, approval: Approval, action: str, decision: Decision,
                    extra: dict[str, Any], incident: str | None = None, enforced: bool = True) -> None:
        self._write(decision_event(action, decision, stage="dlp", source=_peer(flow.client_conn), host=approval.host,
                                   port=approval.port, ip=approval.ip, url=_request_url(flow, approval),
                                   method=flow.request.method, incident=incident, extra=extra, enforced=enforced))

    # --- anything that is not HTTP ----------------------------------------------------

    @fail_closed("tcp")
    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        # rawtcp is forced off, so this only runs if that safeguard was defeated.
        self._refuse_tcp(flow)

    @fail_closed("tcp")
    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        self._refuse_tcp(flow)

    def _refuse_tcp(self, flow: tcp.TCPFlow) -> None:
        if flow.messages:
            flow.messages[-1].content = b""  # kill() alone does not stop in-flight TCP data
        flow.kill()
        self._write(decision_event("connection-denied", Decision(Reason.NOT_HTTP, "non-HTTP data in a tunnel is not forwarded"),
                                   stage="request", source=_peer(flow.client_conn)))

    # --- shared steps -----------------------------------------------------------------

    async def _admit(self, flow: http.HTTPFlow, host: str, port: int, what: str) -> Approval | None:
        """Client gate, destination gate and address gate. Answers the flow when refused.

        Report-only (the policy's or the entry's `mode: report`) lets a client or destination
        refusal through as a would-deny; the address gate is a safeguard and always enforced."""
        runtime = self._state(flow.client_conn).runtime
        action = f"{what}-denied"
        if runtime is None:
            self._deny(flow, Decision(Reason.POLICY_UNAVAILABLE, "no policy is loaded"), action, "client", host, port)
            return None
        policy = runtime.policy
        user = _verified_user(flow)
        client = identify_client(policy, flow.client_conn.peername[0], user)
        refusal: tuple[Decision, str] | None = None
        if client is None:
            refusal = Decision(Reason.CLIENT_UNKNOWN, "this client is not listed in the policy"), "client"
            if policy.mode != "report":
                self._deny(flow, refusal[0], "client-refused", "client", host, port)
                return None
        decision = decide_destination(policy, client, host, port)
        if not decision.allowed:
            if not policy.report_only(decision.rule):
                self._deny(flow, decision, action, "destination", host, port)
                return None
            refusal = refusal or (decision, "destination")
        name = _normalised(host)
        try:
            addresses = await resolve(name, port, policy.network)
        except ResolveError as e:
            self._deny(flow, Decision(Reason.RESOLVE_FAILED, str(e), rule=decision.rule, client=client),
                       action, "address", host, port)
            return None
        ip, refused = choose_address(addresses, port, policy.network, self.own_endpoints)
        if ip is None:
            reasons = ", ".join(sorted({str(getattr(r, "value", r)) for _, r in refused}))
            self._deny(flow, Decision(Reason.ADDRESS_REFUSED, f"{name} resolves only to refused addresses ({reasons})",
                                      rule=decision.rule, client=client),
                       action, "address", host, port, extra={"refused": [f"{a} {getattr(r, 'value', r)}" for a, r in refused]})
            return None
        approval = Approval(name, port, str(ip), decision)
        shown, stage = refusal if refusal else (decision, "destination")
        self._write(decision_event(f"{what}-would-deny" if refusal else f"{what}-allowed", shown, stage=stage,
                                   source=_peer(flow.client_conn), user=user, host=name, port=port, ip=str(ip),
                                   url=flow.request.pretty_url if what == "request" else None,
                                   method=flow.request.method if what == "request" else None, enforced=not refusal))
        return approval

    def _approve(self, flow: http.HTTPFlow, approval: Approval) -> None:
        flow.metadata["tollgate"] = {"approved": True, "client": approval.decision.client.name if approval.decision.client else None,
                                     "rule": approval.decision.rule.rule_id if approval.decision.rule else None}
        if approval is self._tunnel(flow):
            allowed = approval.decision.allowed  # else a report-only tunnel: each request is a would-deny
            self._write(decision_event("request-allowed" if allowed else "request-would-deny", approval.decision,
                                       stage="request", source=_peer(flow.client_conn), host=approval.host,
                                       port=approval.port, ip=approval.ip, url=_request_url(flow, approval),
                                       method=flow.request.method, enforced=allowed))

    def _tunnel(self, flow: http.HTTPFlow) -> Approval | None:
        state = self.conns.get(flow.client_conn)
        return state.tunnel if state else None

    def _deny(self, flow: http.HTTPFlow, decision: Decision, action: str, stage: str,
              host: str | None, port: int | None, extra: dict[str, Any] | None = None,
              detectors: list[str] | None = None) -> None:
        incident = new_incident_id()
        flow.response = error_response(decision, incident, detectors)
        flow.metadata["tollgate"] = {"approved": False, "reason": decision.reason.value, "incident": incident}
        self._write(decision_event(action, decision, stage=stage, source=_peer(flow.client_conn),
                                   user=_verified_user(flow), host=host, port=port, incident=incident,
                                   url=flow.request.pretty_url if flow.request.method != "CONNECT" else None,
                                   method=flow.request.method, extra=extra))

    def _refuse_after_error(self, kind: str, data: Any, hook: str, error: Exception) -> None:
        """Block whatever the failed hook was handling, then try to audit it."""
        if isinstance(error, AuditError):
            logger.error("tollgate: %s; refusing traffic until the audit log can be written", error)
            decision = Decision(Reason.AUDIT_UNAVAILABLE, "the audit log cannot be written; traffic is refused "
                                "until it can (see the proxy's console log)")
        else:
            decision = Decision(Reason.INTERNAL_ERROR, f"internal error in the {hook} stage; the traffic was blocked")
        incident = new_incident_id()
        client = None
        try:
            if kind == "http":
                data.response = error_response(decision, incident)
                data.metadata["tollgate"] = {"approved": False, "reason": decision.reason.value, "incident": incident}
                client = data.client_conn
            elif kind == "server":
                data.server.error = f"tollgate: {decision.message}"
                client = data.client
            elif kind == "tls":
                client = data.context.client
                self._state(client).tls_refused = True
            elif kind == "ws":
                data.websocket.messages[-1].drop()
                client = data.client_conn
            elif kind == "tcp":
                if data.messages:
                    data.messages[-1].content = b""
                data.kill()
                client = data.client_conn
        finally:
            try:
                self._write(decision_event("internal-error", decision, stage=hook, source=_peer(client) if client else None,
                                           incident=incident))
            except Exception:
                logger.exception("tollgate: could not audit the internal error %s", incident)

    def _state(self, client: connection.Client) -> ConnState:
        state = self.conns.get(client)
        if state is None:
            state = self.conns[client] = ConnState(runtime=self.runtime)
        return state

    def _write(self, event: dict[str, Any]) -> None:
        if self.audit is None:
            raise AuditError("the audit log is not open")
        try:
            self.audit.write(event)
        except AuditError:
            self._audit_ok = False
            self.metrics.audit_errors.inc()
            raise
        self._audit_ok = True
        self.metrics.observe(event)


def _peer(client: connection.Client) -> tuple[str, int] | None:
    if not client or not client.peername:
        return None
    return _peer_address(client.peername)


def _peer_address(peername: tuple) -> tuple[str, int]:
    host, port = peername[:2]
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        host = str(ip.ipv4_mapped)
    return host, port


def _verified_user(flow: http.HTTPFlow) -> str | None:
    # Set by mitmproxy's proxyauth addon only after it checked the password.
    auth = flow.metadata.get("proxyauth")
    return auth[0] if auth else None


def _normalised(host: str) -> str:
    """Canonical form: normalised name, or the IP literal in standard notation."""
    ip = parse_ip_literal(host)
    return str(ip) if ip is not None else normalize_host(host)


def _is_ip(host: str) -> bool:
    try:
        return parse_ip_literal(host) is not None
    except ValueError:
        return False


def _same_name(a: str, b: str) -> bool:
    try:
        return _normalised(a) == _normalised(b)
    except ValueError:
        return False


def _request_url(flow: http.HTTPFlow, approval: Approval) -> str:
    scheme = flow.request.scheme
    host = f"[{approval.host}]" if ":" in approval.host else approval.host
    return f"{scheme}://{host}:{approval.port}{flow.request.path}"
