"""Run `tollgate run ...` under cProfile.

  python scripts/bench_lib/profile_tollgate.py OUT.prof [--whole] run --policy ... --listen ...

START_SIGNAL starts profiling, STOP_SIGNAL stops it and writes the stats to OUT.prof, so the profile
covers exactly the bench's measurement window (no start-up, no warm-up). Without the signals
nothing is profiled, unless --whole: then the whole process life is, written on exit. Only the main thread (mitmproxy's
event loop, where every Tollgate hook runs) is profiled."""

from __future__ import annotations

import cProfile
import signal
import sys

# Real-time signals: mitmproxy's own tools use SIGUSR1/SIGUSR2 for debug dumps.
START_SIGNAL = signal.SIGRTMIN + 3
STOP_SIGNAL = signal.SIGRTMIN + 4


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()
    state = {"windowed": False, "written": False}

    def start(signum, frame) -> None:
        state["windowed"] = True
        profiler.enable()

    def stop(signum, frame) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        state["written"] = True

    signal.signal(START_SIGNAL, start)
    signal.signal(STOP_SIGNAL, stop)
    from tollgate.cli import main as tollgate_main

    whole = "--whole" in argv
    argv = [a for a in argv if a != "--whole"]
    if whole:
        profiler.enable()
    rc = 1
    try:
        rc = tollgate_main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        if whole or (state["windowed"] and not state["written"]):
            profiler.disable()
            profiler.dump_stats(out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
