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


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--listen {value!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
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
    except ValueError as e:
        return _fail(str(e))
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
    audit_path = str(Path(args.audit_dir) / "audit.jsonl") if args.audit_dir else ""
    return asyncio.run(_serve(host, port, ca_dir, policy_path, audit_path, args))


async def _serve(host: str, port: int, ca_dir: Path, policy_path: Path, audit_path: str, args: argparse.Namespace) -> int:
    from mitmproxy import exceptions, options

    from tollgate.mitm.hardening import FORCED
    from tollgate.mitm.master import build_master

    opts = options.Options(listen_host=host, listen_port=port, confdir=str(ca_dir), mode=["regular"])
    master, _ = build_master(opts, quiet=args.quiet)
    try:
        # Set explicitly: mitmproxy only runs `configure` for options that are set.
        master.options.update(
            **FORCED,
            connection_strategy="eager",
            termlog_verbosity="warn" if args.quiet else "info",
            proxyauth=args.proxyauth,
            tollgate_audit_path=audit_path,
            tollgate_reload_interval=max(0.0, args.reload_interval),
            tollgate_policy=str(policy_path),
        )
    except exceptions.OptionsError as e:
        return _fail(str(e))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    await master.run()  # errorcheck exits the process with status 1 on start-up errors
    return 0


if __name__ == "__main__":
    sys.exit(main())
