"""`tollgate audit ...` on a log written by a real proxy: verify catches tampering, search,
summary, export and tail answer a reviewer's questions."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import ssl
import subprocess
import threading

import httpx
import pytest

from tests.support.proxy import BIN, REPO, ProxyExited, tollgate_run
from tests.support.secrets import POSITIVE
from tollgate.audit.writer import AuditWriter

pytestmark = pytest.mark.integration
AWS = POSITIVE["aws_access_key_id"][1]


def audit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "tollgate"), "audit", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def log(env, tmp_path_factory):
    """A log with allowed, denied, blocked and reported decisions, from a real proxy run."""
    tmp = tmp_path_factory.mktemp("review")
    proxy = tollgate_run(tmp, env.policy).start()
    ctx = ssl.create_default_context(cafile=str(proxy.root_ca))
    with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as client:
        client.get(f"https://api.allowed.test:{env.tls.port}/ok")
        client.post(f"https://api.allowed.test:{env.tls.port}/leak", json={"k": AWS})
        client.post(f"https://api.allowed.test:{env.tls.port}/leak-again", json={"k": AWS})
        with pytest.raises(httpx.ProxyError):
            client.get(f"https://unlisted.test:{env.tls.port}/")
    proxy.stop()
    return proxy.audit_path


def copy(log, tmp_path):
    target = tmp_path / "audit.jsonl"
    shutil.copy(log, target)
    return target


def test_verify_intact_log(log):
    done = audit("verify", "--log", str(log))
    assert done.returncode == 0 and done.stdout.startswith("OK: ")


def test_verify_finds_an_edited_line(log, tmp_path):
    target = copy(log, tmp_path)
    lines = target.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"outcome":"failure"', b'"outcome":"success"').replace(b"ops", b"opz")
    target.write_bytes(b"".join(lines))
    done = audit("verify", "--log", str(target))
    assert done.returncode == 1
    assert f"{target}:5: edited: the line before it (audit.jsonl:4)" in done.stdout


def test_verify_finds_a_deleted_line(log, tmp_path):
    target = copy(log, tmp_path)
    lines = target.read_bytes().splitlines(keepends=True)
    del lines[4]
    target.write_bytes(b"".join(lines))
    done = audit("verify", "--log", str(target))
    assert done.returncode == 1 and f"{target}:5: missing: 1 line(s) missing after audit.jsonl:4" in done.stdout


def test_verify_finds_reordered_lines(log, tmp_path):
    target = copy(log, tmp_path)
    lines = target.read_bytes().splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    target.write_bytes(b"".join(lines))
    done = audit("verify", "--log", str(target))
    assert done.returncode == 1
    assert f"{target}:4: reordered: it follows audit.jsonl:5, not the line above it" in done.stdout


def test_verify_across_rotation(tmp_path):
    writer = AuditWriter(tmp_path / "audit.jsonl", rotate_bytes=4096)
    for i in range(60):
        writer.write({"event": {"action": "test"}, "n": i})
    writer.close()
    assert len(list(tmp_path.glob("audit.jsonl.*"))) >= 1
    done = audit("verify", "--log", str(tmp_path / "audit.jsonl"))
    assert done.returncode == 0 and "OK: 60 lines" in done.stdout
    oldest = sorted(tmp_path.glob("audit.jsonl.*"))[0]
    oldest.unlink()  # losing a rotated file breaks the chain of the next one
    assert audit("verify", "--log", str(tmp_path / "audit.jsonl")).returncode == 1


def test_search_by_destination_detector_and_fingerprint(log):
    done = audit("search", "--log", str(log), "--destination", "allowed.test", "--detector", "aws_access_key_id",
                 "--format", "json")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"]["action"] for e in events] == ["request-blocked", "request-blocked"]
    fingerprint = events[0]["tollgate"]["dlp"]["findings"][0]["fingerprint"]
    same = audit("search", "--log", str(log), "--fingerprint", fingerprint, "--format", "json").stdout.splitlines()
    assert len(same) == 2  # the same value in two incidents
    denied = audit("search", "--log", str(log), "--outcome", "failure", "--destination", "unlisted.test")
    assert "destination_not_allowed" in denied.stdout and "(1 events)" in denied.stdout
    assert AWS not in done.stdout


def test_time_filters(log):
    assert "(0 events)" in audit("search", "--log", str(log), "--until", "2000-01-01").stdout
    assert "(0 events)" not in audit("search", "--log", str(log), "--since", "1h").stdout
    bad = audit("search", "--log", str(log), "--since", "yesterday-ish")
    assert bad.returncode == 2


def test_summary_answers_what_left_and_what_was_blocked(log, env):
    done = audit("summary", "--log", str(log), "--format", "json")
    numbers = json.loads(done.stdout)
    actions = dict(numbers["by_action"])
    assert actions["request-blocked"] == 2 and actions["connection-denied"] == 1
    assert dict(numbers["findings_by_detector"])["aws_access_key_id → block"] == 2
    assert dict(numbers["denied_destinations"]) == {f"unlisted.test:{env.tls.port}": 1}
    table = audit("summary", "--log", str(log)).stdout
    assert "DLP findings by detector → action" in table and "aws_access_key_id → block" in table


def test_csv_export(log, tmp_path):
    out = tmp_path / "events.csv"
    assert audit("export", "--log", str(log), "--action", "request-blocked", "--csv", str(out)).returncode == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 2 and rows[0]["detectors"] == "aws_access_key_id"
    assert rows[0]["fingerprints"].startswith("hmac-sha256:") and AWS not in out.read_text()


def test_tail_last_events(log):
    done = audit("tail", "--log", str(log), "-n", "2")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3  # header + 2
    assert "proxy-stopped" in done.stdout


def test_unwritable_audit_log_refuses_to_start(env, tmp_path):
    (tmp_path / "audit").mkdir()
    os.symlink("/dev/full", tmp_path / "audit" / "audit.jsonl")  # every write fails: ENOSPC
    with pytest.raises(ProxyExited) as err:
        tollgate_run(tmp_path, env.policy).start()
    assert "No space left on device" in str(err.value)


def test_encrypted_evidence_only_the_reviewer_can_read(env, tmp_path):
    keys = tmp_path / "reviewer"
    assert audit("keygen", "--out", str(keys)).returncode == 0
    assert oct(os.stat(f"{keys}.key").st_mode & 0o777) == "0o600"
    policy = tmp_path / "policy.yaml"
    policy.write_text(env.policy.read_text() + f"  evidence_public_key: {keys}.pub\n")
    proxy = tollgate_run(tmp_path, policy).start()
    try:
        ctx = ssl.create_default_context(cafile=str(proxy.root_ca))
        with httpx.Client(proxy=proxy.url, verify=ctx, timeout=20) as client:
            r = client.post(f"https://api.allowed.test:{env.tls.port}/leak", json={"deploy_key": AWS})
        incident = r.json()["incident"]
    finally:
        proxy.stop()
    text = proxy.audit_path.read_text()
    assert AWS not in text and "x25519-aes256gcm:" in text  # sealed: the proxy host cannot read it
    revealed = audit("reveal", "--log", str(proxy.audit_path), "--key", f"{keys}.key", "--incident", incident)
    assert revealed.returncode == 0
    assert AWS in revealed.stdout and "deploy_key" in revealed.stdout  # the context around the value
    other = tmp_path / "other"
    audit("keygen", "--out", str(other))
    wrong = audit("reveal", "--log", str(proxy.audit_path), "--key", f"{other}.key", "--incident", incident)
    assert wrong.returncode == 2 and "not sealed to that key" in wrong.stderr and AWS not in wrong.stdout + wrong.stderr


CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_html_report_in_a_real_browser(log, tmp_path):
    report = tmp_path / "report.html"
    done = audit("report", "--log", str(log), "--html", str(report))
    assert done.returncode == 0, done.stderr
    html_text = report.read_text()
    assert AWS not in html_text and "<script" not in html_text and "http://" not in html_text  # self-contained
    incidents = [json.loads(line)["tollgate"]["incident"] for line in log.read_text().splitlines()
                 if json.loads(line)["event"]["action"] == "request-blocked"]
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(CHROMIUM + profile + ["--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert dom.count("<svg") >= 3 and "Incidents (" in dom
    assert all(incident in dom for incident in incidents)
    shot = tmp_path / "report.png"
    subprocess.run(CHROMIUM + profile + ["--window-size=1200,900", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank


def line_within(proc: subprocess.Popen, seconds: float = 20) -> str:
    """The next line of a process's output, or a failure (not a hang) if none comes."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    assert box, f"no line within {seconds} s"
    return box[0]


def test_tail_follow_shows_new_events(tmp_path):
    path = tmp_path / "audit.jsonl"
    writer = AuditWriter(path)
    writer.write({"event": {"action": "first-event"}})
    follower = subprocess.Popen([str(BIN / "tollgate"), "audit", "tail", "--log", str(path), "-n", "1", "--follow"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "first-event" in line_within(follower) + line_within(follower)
        writer.write({"event": {"action": "live-event"}, "tollgate": {"client": "ops"}})
        line = line_within(follower)  # arrives within the 0.5 s poll
        assert "live-event" in line and "ops" in line
    finally:
        follower.terminate()
        follower.wait(10)
        writer.close()


def worker_streams(root):
    """Two worker streams as `tollgate run --workers 2` writes them, events interleaved in time."""
    writers = [AuditWriter(root / f"worker-{i}" / "audit.jsonl") for i in (0, 1)]
    for n in range(6):
        writers[n % 2].write({"event": {"action": f"step-{n}"}, "tollgate": {"client": "ops"}})
    for w in writers:
        w.close()
    return [root / f"worker-{i}" / "audit.jsonl" for i in (0, 1)]


def test_a_directory_is_every_worker_stream(tmp_path):
    worker_streams(tmp_path)
    done = audit("verify", "--log", str(tmp_path))
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines() == [f"{tmp_path}/worker-{i}/audit.jsonl: OK: 3 lines in 1 file(s), hash chain intact"
                                        for i in (0, 1)]
    done = audit("search", "--log", str(tmp_path), "--client", "ops", "--format", "json")
    assert [json.loads(line)["event"]["action"] for line in done.stdout.splitlines()] == [f"step-{n}" for n in range(6)]
    done = audit("tail", "--log", str(tmp_path), "-n", "2")
    assert "step-4" in done.stdout and "step-5" in done.stdout and "step-3" not in done.stdout


def test_a_directory_verify_names_the_broken_stream(tmp_path):
    _, second = worker_streams(tmp_path)
    lines = second.read_bytes().splitlines(keepends=True)
    del lines[1]
    second.write_bytes(b"".join(lines))
    done = audit("verify", "--log", str(tmp_path))
    assert done.returncode == 1
    assert f"{tmp_path}/worker-0/audit.jsonl: OK: 3 lines" in done.stdout
    assert f"{second}: BROKEN after 1 good lines: {second}:2: missing" in done.stdout


def test_an_empty_directory_is_no_log(tmp_path):
    done = audit("summary", "--log", str(tmp_path))
    assert done.returncode == 2 and f"no audit log at {tmp_path}" in done.stderr


def test_tail_follow_over_a_directory_sees_every_worker(tmp_path):
    worker_streams(tmp_path)
    follower = subprocess.Popen([str(BIN / "tollgate"), "audit", "tail", "--log", str(tmp_path), "-n", "0", "--follow"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "event.action" in line_within(follower)  # the header: -n 0 shows no old events
        for i in (1, 0):
            writer = AuditWriter(tmp_path / f"worker-{i}" / "audit.jsonl")
            writer.write({"event": {"action": f"live-from-{i}"}})
            writer.close()
            assert f"live-from-{i}" in line_within(follower)
    finally:
        follower.terminate()
        follower.wait(10)
