"""The processes under test, all on 127.0.0.1: nginx (the HTTPS upstream), bare mitmdump,
Tollgate (`tollgate run`) and Squid with ssl-bump. Each writes its console output to a file in
its own directory under the run's temporary directory."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
LISTEN_LINE = re.compile(rb"tollgate: listening on \[?([0-9a-f.:]+?)\]?:(\d+)")


class StartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with {proc.returncode}:\n{tail(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"not listening on {port} after {timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def command_output(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


class Service:
    name = ""
    proxy = ""  # "127.0.0.1:PORT" for a proxy, "" for none
    cafile: Path
    supports_h2 = True

    def __init__(self, workdir: Path):
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "console.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def _spawn(self, cmd: list[str], **kw) -> None:
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, cwd=self.dir,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._logf.close()
            return self.proc.returncode
        return None


class Nginx(Service):
    """HTTPS upstream with HTTP/1.1 and HTTP/2. The public server reads each request body in
    full (proxy_request_buffering, bodies up to 128 KB stay in memory) and hands it to an
    internal server on a unix socket that answers `{"ok":true}`; the access log records the
    protocol, status, bytes received and Content-Length of every request, so the bench can
    check that every body really arrived."""

    name = "nginx"

    def __init__(self, workdir: Path, host: str, cert: Path, key: Path, ca: Path, workers: int = 1):
        super().__init__(workdir)
        self.host, self.cert, self.key, self.cafile, self.workers = host, cert, key, ca, workers
        self.port = free_port()
        self.access_log = self.dir / "access.log"

    def start(self) -> "Nginx":
        d = self.dir
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / sub).mkdir(exist_ok=True)
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        conf = f"""\
daemon off;
master_process on;
worker_processes {self.workers};
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  log_format bench '$server_protocol $request_method $status $request_length $content_length';
  upstream sink {{ server unix:{d}/sink.sock; keepalive 64; }}
  server {{
    listen unix:{d}/sink.sock;
    access_log off;
    keepalive_requests 1000000;
    location / {{ default_type application/json; return 200 '{{"ok":true}}\\n'; }}
  }}
  server {{
    listen 127.0.0.1:{self.port} ssl http2;
    server_name {self.host};
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_buffer_size 128k;
    client_max_body_size 1m;
    access_log {self.access_log} bench;
    location / {{
      proxy_pass http://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering on;
    }}
  }}
}}
"""
        (d / "nginx.conf").write_text(conf)
        self._spawn(["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")])
        wait_port(self.port, self.proc, d / "error.log")
        return self

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful shutdown
        return super().stop(timeout)

    @staticmethod
    def version() -> str:
        return command_output(["nginx", "-v"]).replace("nginx version: ", "")


class MitmDump(Service):
    """Bare mitmdump from the venv: no addons, quiet (-q), trusting the upstream's test CA."""

    name = "mitmdump"

    def __init__(self, workdir: Path, upstream_ca: Path):
        super().__init__(workdir)
        self.upstream_ca = upstream_ca
        self.port = free_port()
        self.proxy = f"127.0.0.1:{self.port}"
        self.cafile = self.dir / "mitmproxy-ca-cert.pem"

    def start(self) -> "MitmDump":
        self._spawn([str(VENV_BIN / "mitmdump"), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
                     "--set", f"confdir={self.dir}", "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}"])
        wait_port(self.port, self.proc, self.log)
        return self

    @staticmethod
    def version() -> str:
        return command_output([str(VENV_BIN / "mitmdump"), "--version"]).splitlines()[0].replace("Mitmproxy: ", "")


def write_policy(path: Path, host: str, port: int, upstream_ca: Path, audit_path: Path) -> Path:
    """Allow `host:port` for this machine with mode intercept, resolve it to 127.0.0.1 and allow
    that address (the approach of tests/integration/conftest.py), trust the upstream's test CA,
    and use the example policy's whole `dlp:` section (every built-in detector plus its custom
    one)."""
    example = yaml.safe_load((REPO / "policies" / "example.yaml").read_text())
    policy = {
        "version": 1,
        "clients": [{"name": "bench", "cidrs": ["127.0.0.1/32"]}],
        "destinations": [{"host": host, "ports": [port], "clients": ["bench"], "mode": "intercept",
                          "owner": "bench@example.org", "justification": "scripts/bench load target",
                          "review_by": "2027-12-31"}],
        "dlp": example["dlp"],
        "network": {"deny_private": True, "allow_cidrs": ["127.0.0.1/32"], "resolve": {host: "127.0.0.1"}},
        "upstream": {"extra_ca_files": [str(upstream_ca)]},
        "audit": {"path": str(audit_path)},
    }
    path.write_text("# Generated by scripts/bench.\n" + yaml.safe_dump(policy, sort_keys=False))
    return path


class Tollgate(Service):
    """`tollgate run` with the generated policy. With `profile_out`, the same command runs under
    cProfile (scripts/bench_lib/profile_tollgate.py) and writes its stats there on exit."""

    name = "tollgate"

    def __init__(self, workdir: Path, host: str, upstream_port: int, upstream_ca: Path, *, quiet: bool = True,
                 profile_out: Path | None = None, extra: list[str] | None = None, workers: int = 1):
        if workers > 1:
            self.name = f"tollgate-{workers}w"
        super().__init__(workdir)
        self.workers = workers
        self.ca_dir, self.audit_dir = self.dir / "ca", self.dir / "audit"
        self.audit_path = self.audit_dir / "audit.jsonl"
        self.policy = write_policy(self.dir / "policy.yaml", host, upstream_port, upstream_ca, self.audit_path)
        self.cafile = self.ca_dir / "root-ca.pem"
        self.quiet, self.profile_out, self.extra = quiet, profile_out, extra or []

    def command(self) -> list[str]:
        args = ["run", "--policy", str(self.policy), "--listen", "127.0.0.1:0", "--ca-dir", str(self.ca_dir),
                "--audit-dir", str(self.audit_dir), "--grace", "2", "--workers", str(self.workers), *self.extra]
        if self.quiet:
            args.append("--quiet")
        if self.profile_out:
            return [sys.executable, str(Path(__file__).with_name("profile_tollgate.py")), str(self.profile_out), *args]
        return [str(VENV_BIN / "tollgate"), *args]

    @property
    def audit_paths(self) -> list[Path]:
        """One audit log, or one per worker (AUDIT_DIR/worker-I/audit.jsonl)."""
        if self.workers == 1:
            return [self.audit_path]
        return [self.audit_dir / f"worker-{i}" / "audit.jsonl" for i in range(self.workers)]

    def start(self, timeout: float = 60) -> "Tollgate":
        self._spawn(self.command())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            console = self.log.read_bytes()
            match = LISTEN_LINE.search(console)
            if match and (self.workers == 1 or b"workers)" in console):  # the supervisor: every worker listens
                self.proxy = f"{match.group(1).decode()}:{int(match.group(2))}"
                wait_port(int(match.group(2)), self.proc, self.log)
                return self
            if self.proc.poll() is not None:
                raise StartError(f"tollgate exited with {self.proc.returncode}:\n{tail(self.log)}")
            time.sleep(0.05)
        raise StartError(f"tollgate did not start in {timeout}s:\n{tail(self.log)}")


class Squid(Service):
    """Squid with ssl-bump (peek at step 1, then bump): its own RSA CA, certificates made by
    security_file_certgen into a DB in the temporary directory, upstream verified against the
    upstream's test CA. No caching, no access log. Squid does not speak HTTP/2."""

    name = "squid"
    supports_h2 = False
    BINARY = "/usr/sbin/squid"
    CERTGEN = "/usr/lib/squid/security_file_certgen"

    def __init__(self, workdir: Path, upstream_ca: Path, ca_cert: Path, ca_key: Path):
        super().__init__(workdir)
        self.upstream_ca, self.cafile, self.ca_key = upstream_ca, ca_cert, ca_key
        self.port = free_port()
        self.proxy = f"127.0.0.1:{self.port}"

    def start(self) -> "Squid":
        d = self.dir
        db = d / "ssl_db"
        run_as_proxy = os.geteuid() == 0
        if db.exists():
            shutil.rmtree(db)
        subprocess.run([self.CERTGEN, "-c", "-s", str(db), "-M", "16MB"], check=True, capture_output=True)
        conf = f"""\
http_port 127.0.0.1:{self.port} ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert={self.cafile} tls-key={self.ca_key}
sslcrtd_program {self.CERTGEN} -s {db} -M 16MB
sslcrtd_children 4 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={self.upstream_ca}
acl bench_clients src 127.0.0.1/32
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
netdb_filename none
pinger_enable off
icp_port 0
logfile_rotate 0
shutdown_lifetime 1 seconds
hosts_file /etc/hosts
visible_hostname tollgate-bench
client_persistent_connections on
server_persistent_connections on
max_filedescriptors 16384
{"cache_effective_user proxy" if run_as_proxy else ""}
"""
        (d / "squid.conf").write_text(conf)
        if run_as_proxy:  # squid drops to `proxy`, which must read its files and write its logs
            subprocess.run(["chown", "-R", "proxy:proxy", str(d)], check=True)
            os.chmod(d, 0o755)
        parse = subprocess.run([self.BINARY, "-k", "parse", "-f", str(d / "squid.conf")], capture_output=True, text=True)
        if parse.returncode != 0:
            raise StartError(f"squid -k parse failed:\n{parse.stdout}{parse.stderr}")
        self._spawn([self.BINARY, "-N", "-d", "1", "-f", str(d / "squid.conf")])
        wait_port(self.port, self.proc, self.log)
        return self

    @staticmethod
    def version() -> str:
        out = command_output([Squid.BINARY, "-v"])
        first = out.splitlines()[0] if out else "unavailable"
        return first.replace("Squid Cache: Version ", "") + (" (--with-openssl)" if "--with-openssl" in out else "")
