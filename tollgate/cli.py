"""The `tollgate` command: run the proxy, manage the CA, check policies, review the audit log."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

DEFAULT_POLICY = "policies/example.yaml"
DEFAULT_CA_DIR = "ca"
DEFAULT_AUDIT_DIR = "var/audit"
DEFAULT_LISTEN = "127.0.0.1:8080"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollgate", description="Intercepting HTTPS egress proxy with DLP.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--policy", default=None, help=f"policy file (default: {DEFAULT_POLICY})")
    run.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to listen on (default: {DEFAULT_LISTEN}; port 0 picks one)")
    run.add_argument("--ca-dir", default=DEFAULT_CA_DIR, help=f"where the local CA lives; created on first run (default: {DEFAULT_CA_DIR})")
    run.add_argument("--audit-dir", default=None,
                     help=f"write the audit log to DIR/audit.jsonl (default: the policy's audit.path, {DEFAULT_AUDIT_DIR}/audit.jsonl)")
    run.add_argument("--proxyauth", default=None,
                     help="require proxy authentication, as mitmproxy's proxyauth: 'user:pass', '@htpasswd-file'")
    run.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                     help="how often to check the policy file for changes (default 1; 0: reload on SIGHUP only)")
    run.add_argument("--metrics-listen", default="", metavar="HOST:PORT",
                     help="serve GET /metrics (Prometheus) and GET /healthz here (default: off)")
    run.add_argument("--workers", type=int, default=None,
                     help="proxy processes sharing the port (SO_REUSEPORT). With more than one, each writes its own "
                          "audit log, AUDIT_DIR/worker-I/audit.jsonl (default: the number of usable cores)")
    run.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                     help="on SIGTERM/SIGINT, stop accepting and let requests in flight finish for up to this long "
                          "(default 10; a second signal stops at once)")
    run.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    from tollgate import audit_cli, ca_cli, policy_cli

    ca_cli.add_parser(sub)
    policy_cli.add_parser(sub)
    audit_cli.add_parser(sub)
    # `policy test FILE --client IP URL`: argparse leaves a positional after options unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "policy_command", None) == "test" and args.url is None \
            and len(extra) == 1 and not extra[0].startswith("-"):
        args.url, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "run":
        return cmd_run(args)
    if args.command == "ca":
        return ca_cli.run(args)
    if args.command == "audit":
        return audit_cli.run(args)
    if args.command == "policy":
        return policy_cli.run(args)
    return 2  # pragma: no cover - argparse enforces the subcommand


def _fail(message: str) -> int:
    print(f"tollgate: cannot start: {message}", file=sys.stderr, flush=True)
    return 2


def parse_listen(value: str, option: str = "--listen") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{option} {value!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_policy() -> Path:
    local = Path(DEFAULT_POLICY)
    if local.is_file():
        return local
    return Path(__file__).resolve().parent.parent / DEFAULT_POLICY


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here so `tollgate --help` stays fast and policy errors print before mitmproxy loads.
    from tollgate.policy.loader import PolicyError, load_policy
    from tollgate.tls.ca import CaError, ensure_ca
    from tollgate.tls.scope import intercept_scope

    try:
        host, port = parse_listen(args.listen)
        metrics = parse_listen(args.metrics_listen, "--metrics-listen") if args.metrics_listen else None
    except ValueError as e:
        return _fail(str(e))
    if args.workers is None:
        from tollgate.workers import default_workers

        args.workers = 1 if args.worker_index is not None else default_workers()
    if args.workers < 1:
        return _fail("--workers must be 1 or more")
    policy_path = Path(args.policy) if args.policy else default_policy()
    try:
        policy = load_policy(policy_path)
    except PolicyError as e:
        return _fail(f"policy {policy_path} is invalid:\n{e}")
    ca_dir = Path(args.ca_dir)
    try:
        status = ensure_ca(ca_dir, intercept_scope(policy))
    except CaError as e:
        return _fail(f"CA in {ca_dir}: {e}")
    print(f"tollgate: CA certificate for clients: {ca_dir / 'root-ca.pem'} (sha256 {status.root_sha256})", flush=True)
    if args.workers > 1 and args.worker_index is None:
        audit_dir = Path(args.audit_dir) if args.audit_dir else Path(policy.audit.path).parent
        return _supervise(args, host, port, policy_path, audit_dir, metrics)
    audit_path = str(Path(args.audit_dir) / "audit.jsonl") if args.audit_dir else ""
    return asyncio.run(_serve(host, port, ca_dir, policy_path, audit_path, args))


def _supervise(args: argparse.Namespace, host: str, port: int, policy_path: Path, audit_dir: Path,
               metrics: tuple[str, int] | None) -> int:
    from tollgate.workers import reserve_port, supervise, worker_audit_dir

    try:
        reserved, port = reserve_port(host, port)
    except OSError as e:
        return _fail(f"--listen {args.listen}: {e.strerror}")
    commands = []
    for i in range(args.workers):
        cmd = [sys.executable, "-m", "tollgate.cli", "run", "--policy", str(policy_path),
               "--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "--ca-dir", args.ca_dir,
               "--audit-dir", str(worker_audit_dir(audit_dir, i)), "--reload-interval", str(args.reload_interval),
               "--worker-index", str(i), "--grace", str(args.grace)]
        if metrics:  # one ops listener per worker: PORT, PORT+1, ...
            cmd += ["--metrics-listen", f"{metrics[0]}:{metrics[1] + i if metrics[1] else 0}"]
        if args.proxyauth:
            cmd += ["--proxyauth", args.proxyauth]
        if args.quiet:
            cmd.append("--quiet")
        commands.append(cmd)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return supervise(commands, shown, reserved)


async def _serve(host: str, port: int, ca_dir: Path, policy_path: Path, audit_path: str, args: argparse.Namespace) -> int:
    from mitmproxy import exceptions, options

    from tollgate.mitm.hardening import FORCED
    from tollgate.mitm.master import build_master

    if args.worker_index is not None:
        _share_listening_port()
    opts = options.Options(listen_host=host, listen_port=port, confdir=str(ca_dir), mode=["regular"])
    master, addon = build_master(opts)
    try:
        # Set explicitly: mitmproxy only runs `configure` for options that are set.
        master.options.update(
            **FORCED,
            connection_strategy="eager",
            termlog_verbosity="warn" if args.quiet else "info",
            proxyauth=args.proxyauth,
            tollgate_audit_path=audit_path,
            tollgate_reload_interval=max(0.0, args.reload_interval),
            tollgate_metrics_listen=args.metrics_listen,
            tollgate_policy=str(policy_path),
        )
    except exceptions.OptionsError as e:
        return _fail(str(e))
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def stop() -> None:
        if stopping:  # a second signal: stop now
            master.shutdown()
        else:
            stopping.append(loop.create_task(_graceful_stop(master, addon, args.grace)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    loop.set_exception_handler(_quiet_cancellation)
    await master.run()  # errorcheck exits the process with status 1 on start-up errors
    return 0


async def _graceful_stop(master, addon, grace: float) -> None:
    """Stop accepting connections, let requests in flight finish (up to `grace` seconds), stop."""
    proxyserver = master.addons.get("proxyserver")
    try:
        await asyncio.wait_for(proxyserver.servers.update([]), 5)
    except Exception:
        pass  # stopping anyway
    deadline = asyncio.get_running_loop().time() + grace
    while addon.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    master.shutdown()


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """Python 3.11's asyncio.StreamReaderProtocol asks a cancelled connection task for its
    exception, so every client connection still open when the proxy stops printed a
    CancelledError traceback (fixed in 3.12). A cancellation is the stop itself, not an error;
    anything else goes to the default handler."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def _share_listening_port() -> None:
    """A worker of `--workers N`: mitmproxy's listener binds with SO_REUSEPORT, so the kernel
    balances connections across the workers. mitmproxy has no option for it, so this process's
    asyncio.start_server gets reuse_port=True by default (the ops listener passes False)."""
    import functools

    asyncio.start_server = functools.partial(asyncio.start_server, reuse_port=True)  # type: ignore[assignment]


if __name__ == "__main__":
    sys.exit(main())
