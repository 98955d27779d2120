"""`tollgate ca ...`: create, show, renew, rotate and export the local CA."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tollgate.policy.loader import PolicyError, load_policy
from tollgate.tls import ca
from tollgate.tls.scope import intercept_scope


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("ca", help="manage the local CA")
    cas = parser.add_subparsers(dest="ca_command", required=True)

    def common(p: argparse.ArgumentParser, policy: bool = True) -> None:
        p.add_argument("--ca-dir", default="ca", help="the CA directory (default: ca)")
        if policy:
            p.add_argument("--policy", default=None, help="policy whose intercepted names the CA may sign "
                                                          "(default: policies/example.yaml)")
        p.add_argument("--passphrase-env", metavar="VAR", default=None,
                       help="read the root key's passphrase from this environment variable")

    init = cas.add_parser("init", help="create a root and a name-constrained intermediate")
    common(init)
    init.add_argument("--key-type", choices=["ec-p256", "rsa-3072"], default="ec-p256")
    init.add_argument("--root-days", type=int, default=ca.CaSettings.root_days)
    init.add_argument("--intermediate-days", type=int, default=ca.CaSettings.intermediate_days)
    init.add_argument("--force", action="store_true", help="replace an existing CA (clients must re-trust)")
    show = cas.add_parser("show", help="subjects, validity, constraints, fingerprints, policy coverage")
    common(show)
    renew = cas.add_parser("renew-intermediate", help="a new intermediate for the policy's names, same root")
    common(renew)
    renew.add_argument("--intermediate-days", type=int, default=ca.CaSettings.intermediate_days)
    rotate = cas.add_parser("rotate", help="root rotation: stage a new root, --activate it, --finish the overlap")
    common(rotate)
    step = rotate.add_mutually_exclusive_group()
    step.add_argument("--activate", action="store_true", help="sign under the staged root (both stay trusted)")
    step.add_argument("--finish", action="store_true", help="stop trusting the previous root")
    export = cas.add_parser("export", help="the root certificate for clients")
    common(export, policy=False)
    export.add_argument("--format", choices=["pem", "der", "p12", "jks"], default="pem")
    export.add_argument("--out", required=True, help="file to write")


def run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.ca_command](args)
    except (ca.CaError, PolicyError) as e:
        print(f"tollgate ca {args.ca_command}: {e}", file=sys.stderr)
        return 2


def _scope(args: argparse.Namespace) -> ca.NameScope:
    from tollgate.cli import default_policy

    return intercept_scope(load_policy(Path(args.policy) if args.policy else default_policy()))


def _passphrase(args: argparse.Namespace) -> bytes | None:
    if not args.passphrase_env:
        return None
    value = os.environ.get(args.passphrase_env)
    if not value:
        raise ca.CaError(f"environment variable {args.passphrase_env} is empty or not set")
    return value.encode()


def _init(args: argparse.Namespace) -> int:
    settings = ca.CaSettings(key_type=args.key_type, root_days=args.root_days, intermediate_days=args.intermediate_days)
    status = ca.init_ca(Path(args.ca_dir), _scope(args), settings, force=args.force, passphrase=_passphrase(args))
    print(f"created the CA in {args.ca_dir}: give clients {Path(args.ca_dir) / ca.ROOT_CERT}")
    _print_status(status)
    return 0


def _show(args: argparse.Namespace) -> int:
    status = ca.load_status(Path(args.ca_dir))
    _print_status(status)
    missing = ca.covers(status, _scope(args))
    if missing:
        print(f"NOT COVERED by the intermediate: {', '.join(missing)}  (run: tollgate ca renew-intermediate)")
        return 1
    print("policy coverage: every intercepted name is permitted")
    return 0


def _renew(args: argparse.Namespace) -> int:
    settings = ca.CaSettings(intermediate_days=args.intermediate_days)
    status = ca.renew_intermediate(Path(args.ca_dir), _scope(args), settings, passphrase=_passphrase(args))
    print("issued a new intermediate under the same root; restart the proxy to use it")
    _print_status(status)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    ca_dir = Path(args.ca_dir)
    if args.activate:
        status = ca.activate_rotation(ca_dir)
        print(f"the proxy now signs under the new root; clients trusting {ca_dir / ca.TRUST_BUNDLE} keep working. "
              "Restart the proxy, then run `tollgate ca rotate --finish` once every client has the new root.")
        _print_status(status)
    elif args.finish:
        ca.finish_rotation(ca_dir)
        print(f"the previous root is no longer in {ca_dir / ca.TRUST_BUNDLE}")
    else:
        status = ca.stage_rotation(ca_dir, _scope(args), passphrase=_passphrase(args))
        print(f"staged a new root in {ca_dir / ca.NEXT_DIR}. Install {ca_dir / ca.TRUST_BUNDLE} (both roots) on every "
              "client, then run `tollgate ca rotate --activate`.")
        _print_status(status)
    return 0


def _export(args: argparse.Namespace) -> int:
    ca_dir, out = Path(args.ca_dir), Path(args.out)
    if args.format == "jks":
        keytool = shutil.which("keytool")
        if not keytool:
            raise ca.CaError("--format jks needs Java's keytool on PATH; --format p12 works with Java 9+ too")
        with tempfile.TemporaryDirectory() as tmp:
            pem = Path(tmp) / "root.pem"
            pem.write_bytes(ca.export_root(ca_dir, "pem"))
            subprocess.run([keytool, "-importcert", "-noprompt", "-alias", "tollgate-root-ca", "-file", str(pem),
                            "-keystore", str(out), "-storetype", "JKS", "-storepass", "changeit"],
                           check=True, capture_output=True)
    else:
        out.write_bytes(ca.export_root(ca_dir, args.format))
    print(f"wrote the root certificate ({args.format}) to {out}")
    return 0


def _print_status(status: ca.CaStatus) -> None:
    print(f"root:          {status.root_subject}")
    print(f"  valid until  {status.root_not_after:%Y-%m-%d}   sha256 {status.root_sha256}")
    print(f"intermediate:  {status.intermediate_subject}   key {status.key_type}")
    print(f"  valid until  {status.intermediate_not_after:%Y-%m-%d}   sha256 {status.intermediate_sha256}")
    print(f"  may sign     {', '.join(status.permitted_dns) or '(nothing)'} and their subdomains")


_COMMANDS = {"init": _init, "show": _show, "renew-intermediate": _renew, "rotate": _rotate, "export": _export}
