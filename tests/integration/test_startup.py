"""Start-up: what the first run creates, and refusing to start on a broken policy or CA."""

from __future__ import annotations

import os
import ssl
import socket
import stat
import subprocess

import httpx
import pytest

from tests.support.proxy import BIN, REPO, ProxyExited, mitmdump_run, tollgate_run

pytestmark = pytest.mark.integration

BROKEN = """\
version: 1
clients:
  - name: ops
    cidrs: [127.0.0.1/32]
destinations:
  - host: "*foo.com"
    clients: [nobody]
    mode: intercept
    colour: blue
"""


def test_first_run_creates_ca_with_private_key_and_audit_dir(env):
    ca = env.proxy.ca_dir
    assert (ca / "root-ca.pem").is_file()
    for key_file in ("root-ca.key", "mitmproxy-ca.pem"):
        mode = stat.S_IMODE(os.stat(ca / key_file).st_mode)
        assert mode == 0o600, f"{key_file} has mode {oct(mode)}"
    assert env.proxy.audit_path.is_file()
    started = [e for e in env.proxy.events() if e["event"]["action"] == "proxy-started"]
    assert started and started[0]["tollgate"]["listen"] == [f"127.0.0.1:{env.proxy.port}"]


def test_broken_policy_refuses_to_start_with_file_and_line(tmp_path):
    policy = tmp_path / "broken.yaml"
    policy.write_text(BROKEN)
    proxy = tollgate_run(tmp_path, policy)
    with pytest.raises(ProxyExited) as err:
        proxy.start()
    message = str(err.value)
    assert f"{policy}:6: destinations[0].host" in message
    assert "use '*.foo.com'" in message
    assert f"{policy}:9: destinations[0].colour: unknown key 'colour'" in message
    assert proxy.proc.returncode == 2
    assert not (tmp_path / "ca").exists()  # nothing was created for a policy that cannot run


def test_unknown_client_reference_is_a_start_error(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(BROKEN.replace('"*foo.com"', "api.example.com").replace("    colour: blue\n", ""))
    done = subprocess.run([str(BIN / "tollgate"), "run", "--policy", str(policy), "--listen", "127.0.0.1:0",
                           "--ca-dir", str(tmp_path / "ca")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2
    assert f"{policy}:7: destinations[0].clients[0]: unknown client 'nobody'" in done.stderr


def test_world_readable_ca_key_refuses_to_start(tmp_path, env):
    proxy = tollgate_run(tmp_path, env.policy)
    proxy.start()
    proxy.stop()
    os.chmod(tmp_path / "ca" / "mitmproxy-ca.pem", 0o644)
    with pytest.raises(ProxyExited) as err:
        tollgate_run(tmp_path, env.policy).start()
    assert "chmod 600" in str(err.value)


def test_mitmdump_way_with_broken_policy_exits(tmp_path, env):
    policy = tmp_path / "broken.yaml"
    policy.write_text(BROKEN)
    proxy = mitmdump_run(tmp_path, policy, env.proxy.ca_dir)
    with pytest.raises((ProxyExited, TimeoutError)) as err:
        proxy.start(timeout=30)
    if isinstance(err.value, TimeoutError):
        pytest.fail("mitmdump kept running with a broken policy")
    assert "unknown key 'colour'" in str(err.value)
    proxy.stop()


def test_listen_port_in_use_is_a_clear_error(tmp_path, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([str(BIN / "tollgate"), "run", "--policy", str(env.policy), "--listen", f"127.0.0.1:{port}",
                               "--ca-dir", str(tmp_path / "ca"), "--audit-dir", str(tmp_path / "audit")],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode != 0
    assert "address already in use" in (done.stdout + done.stderr).lower()


def test_quiet_starts_and_prints_only_warnings(env, tmp_path):
    proxy = tollgate_run(tmp_path, env.policy, "--quiet").start()
    try:
        with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.root_ca)), timeout=10) as c:
            assert c.get(f"https://api.allowed.test:{env.tls.port}/").status_code == 200
    finally:
        proxy.stop()
    lines = [line for line in proxy.output().splitlines() if not line.startswith("tollgate: ")]
    assert lines == [], lines  # only the CA and listening lines; no per-request info logging
