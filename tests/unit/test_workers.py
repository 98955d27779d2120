"""How many workers `tollgate run` starts by default: the usable cores, capped by a cgroup quota."""

from __future__ import annotations

import os

from tollgate.workers import default_workers

CORES = len(os.sched_getaffinity(0))


def test_no_cgroup_limit_means_every_usable_core(tmp_path):
    assert default_workers(tmp_path / "absent") == CORES
    unlimited = tmp_path / "cpu.max"
    unlimited.write_text("max 100000\n")
    assert default_workers(unlimited) == CORES


def test_a_container_cpu_quota_caps_the_workers(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("50000 100000\n")  # half a CPU: still one worker
    assert default_workers(quota) == 1
    quota.write_text(f"{CORES * 100000 + 1} 100000\n")  # a quota above the cores changes nothing
    assert default_workers(quota) == CORES


def test_an_unreadable_quota_is_ignored(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("garbage\n")
    assert default_workers(quota) == CORES
