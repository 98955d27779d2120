"""scripts/bench: Tollgate against bare mitmdump and Squid ssl-bump, same load, one run.

Everything runs on 127.0.0.1: an nginx HTTPS upstream (HTTP/1.1 and HTTP/2, with a test CA),
and in front of it bare mitmdump, Tollgate (`tollgate run`, intercepting, with the example
policy's DLP) and Squid (ssl-bump). A load generator in its own process (loadgen.py) drives
each scenario through each system in turn, and also straight to nginx ("direct": the
client's and the upstream's own ceiling). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import procstat  # noqa: E402
from bodies import make_bodies  # noqa: E402
from pki import make_squid_ca, make_upstream_pki  # noqa: E402
from profile_tollgate import START_SIGNAL, STOP_SIGNAL  # noqa: E402
from servers import REPO, MitmDump, Nginx, Squid, StartError, Tollgate, command_output  # noqa: E402

HOST = "localhost"  # resolves to 127.0.0.1 from /etc/hosts for mitmdump and Squid; Tollgate pins it via `network.resolve`
SYSTEMS = ["direct", "mitmdump", "tollgate", "tollgate-2w", "squid"]  # tollgate-2w: `--workers 2`
TARGETS = {1024: 0.90, 65536: 0.85}  # Tollgate req/s >= this share of bare mitmdump's (keep-alive)
P99_TARGET_MS = 2.0  # p99 latency Tollgate adds over bare mitmdump, 1 KB bodies


@dataclass(frozen=True)
class Scenario:
    mode: str  # keep-alive | new-connection
    size: int
    http: str  # 1.1 | 2
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.mode}, HTTP/{self.http}, {size_label(self.size)} body, {self.concurrency} clients"


@dataclass
class Run:
    scenario: Scenario
    system: str
    result: dict = field(default_factory=dict)
    proxy_cpu_s: float = math.nan
    upstream_cpu_s: float = math.nan
    machine_busy_pct: float = math.nan
    other_cpu_s: float = math.nan  # machine CPU in the window not used by the proxy, nginx or the client
    rps_runs: list = field(default_factory=list)  # req/s of every repeat, when --repeat > 1
    peak_rss: int = 0
    upstream: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)
    note: str = ""

    @property
    def rps(self) -> float:
        return self.result.get("rps", math.nan) if self.result else math.nan

    @property
    def p99(self) -> float:
        return self.result.get("p99_ms", math.nan) if self.result else math.nan


def size_label(size: int) -> str:
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# --- machine description ---------------------------------------------------------------------

def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "memory": mem, "kernel": platform.release(),
            "python": platform.python_version(), "mitmproxy": MitmDump.version(),
            "nginx": Nginx.version() if shutil.which("nginx") else "not installed",
            "squid": Squid.version() if Path(Squid.BINARY).exists() else "not installed",
            "openssl": command_output(["openssl", "version"])}


# --- one measurement ------------------------------------------------------------------------

def read_event(proc: subprocess.Popen, expected: str, timeout: float) -> dict:
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"load generator exited before {expected!r}: {err[-2000:]}")
    event = json.loads(line)
    if event.get("event") != expected:
        raise RuntimeError(f"load generator: expected {expected!r}, got {event}")
    return event


def upstream_since(nginx: Nginx, offset: int, size: int) -> dict:
    """What nginx logged since `offset`: request count, protocols, statuses, and whether every
    POST arrived with its whole body (Content-Length == body size, bytes read >= body size)."""
    with open(nginx.access_log, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    protocols, statuses, bad = Counter(), Counter(), 0
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            bad += 1
            continue
        proto, method, status, request_length, content_length = parts[:5]
        protocols[proto] += 1
        statuses[status] += 1
        if method != "POST" or content_length != str(size) or int(request_length) < size:
            bad += 1
    return {"requests": len(lines), "protocols": dict(protocols), "statuses": dict(statuses), "bad_bodies": bad}


def audit_since(paths: list[Path], offsets: dict[Path, int]) -> dict:
    """Counts of audit `event.action` values written since the line `offsets[path]` of each
    log; moves the offsets to the end."""
    actions: Counter = Counter()
    for path in paths:
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        for line in lines[offsets.get(path, 0):]:
            try:
                actions[json.loads(line).get("event", {}).get("action", "?")] += 1
            except json.JSONDecodeError:
                actions["<unparseable>"] += 1
        offsets[path] = len(lines)
    return dict(actions)


def measure(args, scenario: Scenario, system: str, svc, nginx: Nginx, body_files: dict[int, list[Path]],
            audit_offsets: dict[Path, int], on_start=None, on_end=None) -> Run:
    run = Run(scenario, system)
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--host", HOST, "--port", str(nginx.port),
           "--http", scenario.http, "--mode", scenario.mode, "--concurrency", str(scenario.concurrency),
           "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if svc is None:
        cmd += ["--cafile", str(nginx.cafile)]
    else:
        cmd += ["--proxy", svc.proxy, "--cafile", str(svc.cafile)]
    for p in body_files[scenario.size]:
        cmd += ["--body", str(p)]
    log_offset = nginx.access_log.stat().st_size if nginx.access_log.exists() else 0
    proxy_pid = svc.pid if svc is not None else 0
    if proxy_pid and svc.proc.poll() is not None:
        run.note = f"{system} is not running (exit status {svc.proc.returncode})"
        return run
    sampler = procstat.PeakRss(proxy_pid).start() if proxy_pid else None
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_event(gen, "ready", 30)
        read_event(gen, "measure-start", args.warmup + 60)
        if on_start:
            on_start()
        proxy_tree = procstat.tree(proxy_pid) if proxy_pid else []
        nginx_tree = procstat.tree(nginx.pid)
        cpu0 = procstat.cpu_seconds(proxy_tree) if proxy_pid else 0.0
        ng0 = procstat.cpu_seconds(nginx_tree)
        busy0, total0 = procstat.machine_busy()
        read_event(gen, "measure-end", args.duration + 60)
        if on_end:
            on_end()
        if proxy_pid:  # re-read the tree: Squid may have started a helper meanwhile
            run.proxy_cpu_s = procstat.cpu_seconds(sorted(set(proxy_tree) | set(procstat.tree(proxy_pid)))) - cpu0
        run.upstream_cpu_s = procstat.cpu_seconds(nginx_tree) - ng0
        busy1, total1 = procstat.machine_busy()
        run.machine_busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
        run.result = read_event(gen, "result", 60)
        ours = run.upstream_cpu_s + run.result["client_cpu_s"] + (run.proxy_cpu_s if proxy_pid else 0.0)
        run.other_cpu_s = (busy1 - busy0) / procstat.TICK - ours
        gen.wait(30)
    except Exception as e:  # reported, the bench goes on
        run.note = f"load generator failed: {e}"
        gen.kill()
        gen.wait()
    finally:
        if sampler:
            run.peak_rss = sampler.stop()
    time.sleep(0.3)  # let nginx finish writing its log lines
    run.upstream = upstream_since(nginx, log_offset, scenario.size)
    if system.startswith("tollgate"):
        run.audit = audit_since(svc.audit_paths, audit_offsets)
    if proxy_pid and svc.proc.poll() is not None:
        run.note += f" {system} EXITED with status {svc.proc.returncode} during this scenario"
    return run


# --- output ---------------------------------------------------------------------------------

def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


HEADER = (f"{'system':<11} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'proxy CPU s':>11} "
          f"{'CPU ms/req':>10} {'peak RSS MB':>11} {'client CPU s':>12} {'nginx CPU s':>11} {'other CPU s':>11} "
          f"{'x mitmdump':>10} {'+p99 ms':>7}")


def row(run: Run, base: Run | None) -> str:
    r = run.result
    if not r:
        return f"{run.system:<11} {'n/a' if run.note.startswith('n/a') else 'FAILED':>8}  {run.note}"
    errors = sum(r.get("errors", {}).values()) + sum(v for k, v in r.get("statuses", {}).items() if k != "200")
    ok = r.get("ok", 0)
    cpu_per_req = run.proxy_cpu_s * 1000 / ok if ok and not math.isnan(run.proxy_cpu_s) else math.nan
    ratio = plus = math.nan
    if base and base.result and run is not base and run.system != "direct":
        ratio = run.rps / base.rps if base.rps else math.nan
        plus = run.p99 - base.p99
    line = (f"{run.system:<11} {fmt(run.rps, 0):>7} {fmt(r['p50_ms'], 2):>7} {fmt(r['p99_ms'], 2):>7} {errors:>6} "
            f"{fmt(run.proxy_cpu_s, 2):>11} {fmt(cpu_per_req, 2):>10} "
            f"{fmt(run.peak_rss / 2**20 if run.peak_rss else math.nan, 0):>11} {fmt(r['client_cpu_s'], 2):>12} "
            f"{fmt(run.upstream_cpu_s, 2):>11} {fmt(run.other_cpu_s, 2):>11} "
            f"{fmt(ratio, 2):>10} {('+' if plus >= 0 else '') + fmt(plus, 2) if not math.isnan(plus) else '-':>7}")
    if len(run.rps_runs) > 1:
        line += "  runs: " + " ".join(f"{x:.0f}" for x in run.rps_runs)
    return line


def print_scenario(scenario: Scenario, runs: list[Run], out) -> None:
    base = next((r for r in runs if r.system == "mitmdump"), None)
    print(f"\n### {scenario.label}", file=out)
    print("```", file=out)
    print(HEADER, file=out)
    for run in runs:
        print(row(run, base), file=out)
    print("```", file=out)
    for run in runs:
        u = run.upstream
        if not run.result:
            continue
        expected = run.result.get("total_ok", 0)
        check = "ok" if u.get("bad_bodies") == 0 and u.get("requests") == expected else "MISMATCH"
        line = (f"- {run.system}: upstream saw {u.get('requests')} requests ({', '.join(f'{k} {v}' for k, v in u.get('protocols', {}).items())}), "
                f"{u.get('bad_bodies')} without the full {size_label(scenario.size)} body; client got {expected} x 200 "
                f"(warm-up included) [{check}]")
        if run.result.get("errors"):
            line += f"; client errors {run.result['errors']}"
        bad_status = {k: v for k, v in run.result.get("statuses", {}).items() if k != "200"}
        if bad_status:
            line += f"; non-200 statuses {bad_status}"
        if run.audit:
            line += f"; audit events {run.audit}"
        if run.note:
            line += f"; NOTE {run.note.strip()}"
        print(line, file=out)
    out.flush()


def print_targets(all_runs: dict[Scenario, list[Run]], out) -> None:
    print("\n## Targets (Tollgate vs bare mitmdump)", file=out)
    print("```", file=out)
    for scenario, runs in all_runs.items():
        base = next((r for r in runs if r.system == "mitmdump" and r.result), None)
        tg = next((r for r in runs if r.system == "tollgate" and r.result), None)
        if not base or not tg:
            continue
        ratio, plus = tg.rps / base.rps, tg.p99 - base.p99
        checks = []
        if scenario.mode == "keep-alive" and scenario.size in TARGETS:
            need = TARGETS[scenario.size]
            checks.append(f"req/s {ratio:.2f}x (target >= {need:.2f}x: {'MET' if ratio >= need else 'MISSED'})")
        else:
            checks.append(f"req/s {ratio:.2f}x (no target)")
        if scenario.size == 1024:
            target = scenario.mode == "keep-alive"
            checks.append(f"p99 {'+' if plus >= 0 else ''}{plus:.2f} ms" + (
                f" (target <= +{P99_TARGET_MS:.0f} ms: {'MET' if plus <= P99_TARGET_MS else 'MISSED'})" if target
                else " (includes the handshakes; informative)"))
        else:
            checks.append(f"p99 {'+' if plus >= 0 else ''}{plus:.2f} ms")
        print(f"{scenario.label:<52} {'; '.join(checks)}", file=out)
    print("```", file=out)
    scaled = [(s, tg, two) for s, runs in all_runs.items()
              for tg in [next((r for r in runs if r.system == "tollgate" and r.result), None)]
              for two in [next((r for r in runs if r.system == "tollgate-2w" and r.result), None)] if tg and two]
    if scaled:
        print("\n## Scale-out: Tollgate with 2 workers vs 1 (`--workers 2`, SO_REUSEPORT)", file=out)
        print("```", file=out)
        for scenario, tg, two in scaled:
            print(f"{scenario.label:<52} req/s {tg.rps:.0f} -> {two.rps:.0f}: {two.rps / tg.rps:.2f}x", file=out)
        print("```", file=out)


# --- profile mode ---------------------------------------------------------------------------

def print_profile(prof_path: Path, requests: int, top: int, out) -> None:
    stats = pstats.Stats(str(prof_path))
    package = str(REPO / "tollgate") + os.sep
    entries, everything = [], []
    total_tt = own_tt = 0.0
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        total_tt += tt
        name = f"{os.path.relpath(filename, REPO) if filename.startswith(str(REPO)) else short(filename)}:{line}({func})"
        everything.append((tt, ct, nc, cc, name))
        if filename.startswith(package) and filename != package + "cli.py":
            own_tt += tt
            entries.append((ct, tt, nc, cc, name))
    entries.sort(reverse=True)
    everything.sort(reverse=True)
    per = requests or 1
    print(f"\n## cProfile of Tollgate: top {top} cumulative entries in tollgate/", file=out)
    print(f"profile: {prof_path} (the measurement window only; {requests} requests completed in it). cProfile "
          f"sees the event-loop thread only (not DLP inspection, which Tollgate runs in a thread pool), and its "
          f"per-call overhead inflates code made of many small calls: use the call counts, and --profiler py-spy "
          f"for shares", file=out)
    print(f"self time in tollgate/ functions: {own_tt:.3f} s of {total_tt:.3f} s profiled "
          f"({100 * own_tt / total_tt if total_tt else 0:.1f}%); per request: {own_tt * 1e6 / per:.0f} us "
          f"of {total_tt * 1e6 / per:.0f} us", file=out)
    print("```", file=out)
    print(f"{'ncalls':>9} {'tottime s':>9} {'cumtime s':>9} {'cum us/req':>10}  function", file=out)
    for ct, tt, nc, cc, name in entries[:top]:
        calls = f"{nc}" if nc == cc else f"{nc}/{cc}"
        print(f"{calls:>9} {tt:9.3f} {ct:9.3f} {ct * 1e6 / per:10.0f}  {name}", file=out)
    print("```", file=out)
    print("\nFor context, the top 15 of the whole process by own time (mitmproxy, OpenSSL, cryptography, ...):",
          file=out)
    print("```", file=out)
    print(f"{'ncalls':>9} {'tottime s':>9} {'cumtime s':>9} {'own us/req':>10}  function", file=out)
    for tt, ct, nc, cc, name in everything[:15]:
        calls = f"{nc}" if nc == cc else f"{nc}/{cc}"
        print(f"{calls:>9} {tt:9.3f} {ct:9.3f} {tt * 1e6 / per:10.0f}  {name}", file=out)
    print("```", file=out)


def short(filename: str) -> str:
    """site-packages/mitmproxy/x.py -> mitmproxy/x.py; built-ins stay as they are."""
    marker = "site-packages" + os.sep
    return filename.split(marker, 1)[1] if marker in filename else filename


def profile_mode(args, work: Path, upstream_ca: Path, nginx: Nginx, body_files, out) -> int:
    mode = args.profile
    size = parse_size(csv(args.sizes)[0])
    scenario = Scenario(mode, size, csv(args.http)[0], int(csv(args.concurrency)[0]))
    if args.profiler == "py-spy":
        import pyspy

        try:
            pyspy.ensure_pyspy()
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"py-spy is not available ({e}); using cProfile", file=out)
            args.profiler = "cprofile"
    if args.profiler == "py-spy":
        raw = work / f"tollgate-{mode}.pyspy.txt"
        tollgate = Tollgate(work, HOST, nginx.port, upstream_ca, quiet=not args.tollgate_verbose, extra=args.tollgate_arg)
        tollgate.start()
        recorder = pyspy.Recorder(tollgate.pid, raw)
        print(f"\nprofiling Tollgate with py-spy (sampling, 250 Hz): {scenario.label}, {args.duration:g} s", file=out)
        run = measure(args, scenario, "tollgate", tollgate, nginx, body_files, {},
                      on_start=recorder.start, on_end=recorder.stop)
        tollgate.stop(timeout=60)
        print_scenario(scenario, [run], out)
        if args.profile_out:
            shutil.copyfile(raw, args.profile_out)
        pyspy.report(raw, REPO, run.result.get("completed", 0), run.proxy_cpu_s, args.profile_top, out)
        return 0
    prof = work / f"tollgate-{mode}.prof"
    tollgate = Tollgate(work, HOST, nginx.port, upstream_ca, quiet=not args.tollgate_verbose, profile_out=prof,
                        extra=args.tollgate_arg)
    tollgate.start()
    print(f"\nprofiling Tollgate under cProfile: {scenario.label}, {args.duration:g} s "
          f"(cProfile slows Tollgate down; compare req/s with a normal run, not with this one)", file=out)
    run = measure(args, scenario, "tollgate", tollgate, nginx, body_files, {},
                  on_start=lambda: os.kill(tollgate.pid, START_SIGNAL),
                  on_end=lambda: os.kill(tollgate.pid, STOP_SIGNAL))
    tollgate.stop(timeout=60)
    print_scenario(scenario, [run], out)
    if not prof.exists():
        print(f"no profile written; Tollgate's console:\n{tollgate.log.read_text(errors='replace')[-3000:]}", file=out)
        return 1
    if args.profile_out:
        shutil.copyfile(prof, args.profile_out)
    print_profile(prof, run.result.get("completed", 0), args.profile_top, out)
    return 0


# --- main -----------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10, help="measured seconds per scenario and system (default 10)")
    p.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each measurement (default 1)")
    p.add_argument("--concurrency", default="16", help="concurrent clients; a list runs each (default 16)")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure each scenario and system this many times, in rotating order, and show the "
                        "median run by req/s with every run's req/s (default 1)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    p.add_argument("--modes", default="keep-alive,new-connection")
    p.add_argument("--sizes", default="1k,64k", help="request body sizes, e.g. 1k,64k,4096")
    p.add_argument("--http", default="1.1,2", help="client HTTP versions inside the tunnel: 1.1,2")
    p.add_argument("--profile", choices=["new-connection", "keep-alive"],
                   help="instead of the comparison: run Tollgate alone under cProfile for this mode "
                        "(first of --sizes/--http/--concurrency) and print its top tollgate/ entries")
    p.add_argument("--profile-top", type=int, default=25)
    p.add_argument("--profiler", choices=["py-spy", "cprofile"], default="py-spy",
                   help="py-spy (default: sampling, low overhead, every thread; pip-installed into "
                        "~/.cache/tollgate-bench on first use, cProfile if that fails) or cprofile "
                        "(deterministic call counts; event-loop thread only; slows the proxy a lot)")
    p.add_argument("--profile-out", help="copy the profile here (cProfile stats, or py-spy's collapsed stacks)")
    p.add_argument("--tollgate-verbose", action="store_true", help="run Tollgate without --quiet (info logging)")
    p.add_argument("--tollgate-arg", action="append", default=[], help="extra argument for `tollgate run` (repeat)")
    p.add_argument("--nginx-workers", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write every measurement here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, audit log, configs)")
    args = p.parse_args()
    out = sys.stdout

    systems = csv(args.systems)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if not shutil.which("nginx"):
        p.error("nginx is not installed (apt-get install -y nginx)")
    if "squid" in systems and not Path(Squid.BINARY).exists():
        print("squid is not installed (apt-get install -y squid-openssl): skipping it", file=sys.stderr)
        systems.remove("squid")

    info = machine_info()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# scripts/bench, {started:%Y-%m-%d %H:%M} UTC", file=out)
    print(f"command: scripts/bench {' '.join(sys.argv[1:])}", file=out)
    for k, v in info.items():
        print(f"- {k}: {v}", file=out)

    work = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    os.chmod(work, 0o755)
    print(f"- work directory: {work}{' (kept)' if args.keep else ''}", file=out)
    services: list = []
    try:
        upstream_ca, cert, key = make_upstream_pki(work / "pki", HOST)
        bodies_dir = work / "bodies"
        bodies_dir.mkdir()
        body_files: dict[int, list[Path]] = {}
        for size in {parse_size(s) for s in csv(args.sizes)}:
            body_files[size] = []
            for i, body in enumerate(make_bodies(size)):
                path = bodies_dir / f"{size}-{i}.json"
                path.write_bytes(body)
                body_files[size].append(path)
        precheck_bodies(body_files, out)

        nginx = Nginx(work, HOST, cert, key, upstream_ca, workers=args.nginx_workers).start()
        services.append(nginx)
        if args.profile:
            return profile_mode(args, work, upstream_ca, nginx, body_files, out)

        proxies: dict[str, object] = {"direct": None}
        if "mitmdump" in systems:
            proxies["mitmdump"] = MitmDump(work, upstream_ca)
        if "tollgate" in systems:
            proxies["tollgate"] = Tollgate(work, HOST, nginx.port, upstream_ca, quiet=not args.tollgate_verbose,
                                           extra=args.tollgate_arg)
        if "tollgate-2w" in systems:
            proxies["tollgate-2w"] = Tollgate(work, HOST, nginx.port, upstream_ca, quiet=not args.tollgate_verbose,
                                              extra=args.tollgate_arg, workers=2)
        if "squid" in systems:
            squid_ca, squid_key = make_squid_ca(work / "pki")
            proxies["squid"] = Squid(work, upstream_ca, squid_ca, squid_key)
        for name in [s for s in SYSTEMS if s in systems and s != "direct"]:
            try:
                services.append(proxies[name].start())
            except (StartError, subprocess.CalledProcessError, OSError) as e:
                print(f"{name} did not start: {e}", file=out)
                systems.remove(name)
        order = [s for s in SYSTEMS if s in systems]
        print(f"- systems: {', '.join(order)}; duration {args.duration:g} s (+{args.warmup:g} s warm-up) per run",
              file=out)
        if "tollgate" in order:
            print(f"- tollgate: {' '.join(proxies['tollgate'].command())}", file=out)

        scenarios = [Scenario(m, parse_size(s), h, int(c)) for m in csv(args.modes) for s in csv(args.sizes)
                     for h in csv(args.http) for c in csv(args.concurrency)]
        all_runs: dict[Scenario, list[Run]] = {}
        audit_offsets: dict[Path, int] = {}
        for name in order:
            if name.startswith("tollgate"):
                audit_since(proxies[name].audit_paths, audit_offsets)  # start-up events are not counted
        for scenario in scenarios:
            measured: dict[str, list[Run]] = {s: [] for s in order}
            for rep in range(args.repeat):
                turn = order[rep % len(order):] + order[:rep % len(order)]  # rotate who goes first
                for system in turn:
                    svc = proxies.get(system)
                    if scenario.http == "2" and svc is not None and not svc.supports_h2:
                        continue
                    measured[system].append(measure(args, scenario, system, svc, nginx, body_files, audit_offsets))
            runs = []
            for system in order:
                if not measured[system]:
                    runs.append(Run(scenario, system, note="n/a: no HTTP/2 from clients"))
                    continue
                runs.append(median_run(measured[system]))
            all_runs[scenario] = runs
            print_scenario(scenario, runs, out)
        print_targets(all_runs, out)
        print_health(proxies, out)
        if args.json:
            args.json.write_text(json.dumps({"started": started.isoformat(), "machine": info, "argv": sys.argv[1:],
                                             "runs": [run_json(r) for rs in all_runs.values() for r in rs]}, indent=1))
            print(f"\nmeasurements written to {args.json}", file=out)
        return 0
    finally:
        for svc in reversed(services):
            svc.stop()
        if args.keep:
            print(f"\nkept {work}", file=out)
        else:
            shutil.rmtree(work, ignore_errors=True)


def median_run(runs: list[Run]) -> Run:
    """The run with the median req/s (the lower middle one for an even count); it keeps the
    req/s of all repeats. Upstream and audit counts are summed over the repeats."""
    ok = [r for r in runs if r.result]
    if not ok:
        return runs[0]
    ok.sort(key=lambda r: r.rps)
    chosen = ok[(len(ok) - 1) // 2]
    chosen.rps_runs = [r.rps for r in runs if r.result] if len(runs) > 1 else []
    if len(runs) > 1:
        total_upstream: Counter = Counter()
        protocols: Counter = Counter()
        audit: Counter = Counter()
        expected = 0
        for r in runs:
            total_upstream.update({k: v for k, v in r.upstream.items() if isinstance(v, int)})
            protocols.update(r.upstream.get("protocols", {}))
            audit.update(r.audit)
            expected += r.result.get("total_ok", 0) if r.result else 0
        chosen.upstream = {**chosen.upstream, **total_upstream, "protocols": dict(protocols)}
        chosen.audit = dict(audit)
        chosen.result = {**chosen.result, "total_ok": expected}
        notes = " ".join(r.note for r in runs if r.note)
        chosen.note = notes
    return chosen


def run_json(run: Run) -> dict:
    return {"mode": run.scenario.mode, "size": run.scenario.size, "http": run.scenario.http,
            "concurrency": run.scenario.concurrency, "system": run.system, "result": run.result,
            "proxy_cpu_s": run.proxy_cpu_s, "upstream_cpu_s": run.upstream_cpu_s,
            "machine_busy_pct": run.machine_busy_pct, "other_cpu_s": run.other_cpu_s,
            "peak_rss_bytes": run.peak_rss, "rps_runs": run.rps_runs,
            "upstream": run.upstream, "audit": run.audit, "note": run.note}


def precheck_bodies(body_files: dict[int, list[Path]], out) -> None:
    """Tollgate's own DLP inspection on each body, with the example policy: they must be clean,
    or the comparison would measure blocking instead of forwarding."""
    try:
        from tollgate.dlp.engine import Engine
        from tollgate.dlp.inspect import RequestFacts, inspect_request
        from tollgate.policy.loader import load_policy

        policy = load_policy(REPO / "policies" / "example.yaml")
        engine = Engine.for_policy(policy.dlp)
        actions = Counter()
        for paths in body_files.values():
            for path in paths:
                facts = RequestFacts("/v1/ingest", [("content-type", "application/json")], path.read_bytes(), "",
                                     "application/json", HOST, None)
                actions[inspect_request(engine, policy.dlp, b"k" * 32, facts).action] += 1
        print(f"- bodies: {sum(len(v) for v in body_files.values())} JSON bodies, Tollgate's DLP says {dict(actions)}",
              file=out)
        if set(actions) != {"allow"}:
            raise SystemExit("the generated bodies are not clean for Tollgate's DLP; fix scripts/bench_lib/bodies.py")
    except ImportError as e:  # the package changed under us: the audit counts still show what happened
        print(f"- bodies: DLP pre-check skipped ({e})", file=out)


def print_health(proxies: dict, out) -> None:
    print("\n## Proxy health after the run", file=out)
    for name, svc in proxies.items():
        if svc is None:
            continue
        status = "running" if svc.proc and svc.proc.poll() is None else f"exited {svc.proc.returncode if svc.proc else '?'}"
        text = svc.log.read_text(errors="replace") if svc.log.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        suspicious = [line for line in lines if any(w in line.lower() for w in ("error", "traceback", "exception", "warn"))]
        print(f"- {name}: {status}; console {len(lines)} lines, {len(suspicious)} with error/warning/traceback", file=out)
        for line in suspicious[:8]:
            print(f"    {line[:200]}", file=out)
        if name.startswith("tollgate"):
            actions = audit_since(svc.audit_paths, {})
            print(f"    audit log: {sum(actions.values())} events {actions}", file=out)
            for path in svc.audit_paths:
                verify = subprocess.run([str(Path(sys.executable).parent / "tollgate"), "audit", "verify", "--log",
                                         str(path)], capture_output=True, text=True)
                print(f"    tollgate audit verify {path.relative_to(svc.dir)}: exit {verify.returncode}: "
                      f"{(verify.stdout + verify.stderr).strip()[-500:]}", file=out)


if __name__ == "__main__":
    sys.exit(main())
