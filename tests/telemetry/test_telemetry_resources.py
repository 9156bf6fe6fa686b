"""Node and container resources read from sample /proc and cgroup trees (v2, v1, unlimited, absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from decorator.telemetry.resources import Cgroup, Resources, parse_cpu_list, parse_proc_cgroup, pod_name
from decorator.wire.models import ResourcesPayload

DATA = Path(__file__).parent / "data"
MiB = 1024 * 1024


@pytest.mark.parametrize("tree, version, expected", [
    # memory.current 256 MiB minus inactive_file 64 MiB; the root cgroup's numbers are not picked
    ("v2", 2, {"memory_usage": 192 * MiB, "memory_limit": 512 * MiB, "cpu_usage_seconds": 12.5,
               "cpu_limit_cores": 0.5, "cpu_cores": None}),
    # inside a cgroup namespace the container's own cgroup is the mount root
    ("v2-namespaced", 2, {"memory_usage": 100 * MiB, "memory_limit": 200 * MiB, "cpu_usage_seconds": 1.0,
                          "cpu_limit_cores": 1.5, "cpu_cores": None}),
    # no limits: the cpuset says how many CPUs the container may use
    ("v2-unlimited", 2, {"memory_usage": 50 * MiB, "memory_limit": None, "cpu_usage_seconds": 0.0005,
                         "cpu_limit_cores": None, "cpu_cores": 2}),
    # v1: usage minus total_inactive_file (the hierarchical count), cpuacct.usage in nanoseconds
    ("v1", 1, {"memory_usage": 250 * MiB, "memory_limit": 1024 * MiB, "cpu_usage_seconds": 2.5,
               "cpu_limit_cores": 1.5, "cpu_cores": None}),
    ("v1-unlimited", 1, {"memory_usage": 70 * MiB, "memory_limit": None, "cpu_usage_seconds": 1.0,
                         "cpu_limit_cores": None, "cpu_cores": 3}),
    ("absent", None, {"memory_usage": None, "memory_limit": None, "cpu_usage_seconds": None,
                      "cpu_limit_cores": None, "cpu_cores": None}),
])
def test_cgroup_files(tree, version, expected):
    cg = Cgroup(DATA / tree)
    assert cg.version == version
    got = cg.read()
    assert got == pytest.approx(expected) if version else got == expected


def test_parse_proc_cgroup_v1_and_v2_lines():
    v2, v1 = parse_proc_cgroup("12:memory:/a\n4:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/d\nbroken\n")
    assert v2 == "/d"
    assert v1 == {"memory": "/a", "cpu": "/b", "cpuacct": "/b", "name=systemd": "/c"}
    assert parse_proc_cgroup(None) == (None, {})


def test_node_resources_like_the_seed():
    r = Resources(DATA / "v2", pod="web-1")
    tick = r._tick_ms
    s = r.sample()
    ResourcesPayload.model_validate(s)
    node = s["resource"]
    assert s["pod"] == "web-1" and s["time"] > 0
    assert node["total_memory"] == 8048576 * 1024
    assert node["free_memory"] == 4024288 * 1024          # MemAvailable, as libuv reports
    assert node["load"] == [0.52, 0.41, 0.30]
    assert [c["model"] for c in node["cpus"]] == ["Intel(R) Xeon(R) CPU @ 2.20GHz"] * 2
    assert [c["speed"] for c in node["cpus"]] == [2200, 2400]
    assert node["cpus"][0]["times"] == pytest.approx(
        {"user": 1000 * tick, "nice": 10 * tick, "sys": 500 * tick, "idle": 45000 * tick, "irq": 7 * tick})


def test_absent_files_give_nulls_not_errors():
    s = Resources(DATA / "absent", pod="p").sample()
    ResourcesPayload.model_validate(s)
    assert s["container"] == {"memory_usage": None, "memory_limit": None, "cpu_usage_seconds": None,
                              "cpu_limit_cores": None, "cpu_cores": None, "cpu_percent": None}
    assert s["resource"]["load"] is None
    empty = Resources(DATA / "does-not-exist", pod="p").sample()
    ResourcesPayload.model_validate(empty)
    assert empty["resource"] == {"free_memory": 0, "total_memory": 0, "cpus": [], "load": None}


def test_cpu_percent_from_deltas_between_samples(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(DATA / "v2-namespaced", root)
    now = [100.0]
    r = Resources(root, pod="p", clock=lambda: now[0])
    assert r.sample()["container"]["cpu_percent"] is None     # nothing to compare with yet
    (root / "sys/fs/cgroup/cpu.stat").write_text("usage_usec 1500000\n")   # +0.5 s of CPU
    now[0] = 102.0                                                        # over 2 s
    assert r.sample()["container"]["cpu_percent"] == pytest.approx(25.0)
    (root / "sys/fs/cgroup/cpu.stat").write_text("usage_usec 3500000\n")   # +2 s over 1 s: two cores
    now[0] = 103.0
    assert r.sample()["container"]["cpu_percent"] == pytest.approx(200.0)
    (root / "sys/fs/cgroup/cpu.stat").write_text("usage_usec 10\n")        # counter reset: no number
    now[0] = 104.0
    assert r.sample()["container"]["cpu_percent"] is None


def test_malformed_files_are_ignored(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(DATA / "v2-namespaced", root)
    (root / "sys/fs/cgroup/memory.current").write_text("garbage\n")
    (root / "sys/fs/cgroup/cpu.max").write_text("\n")
    (root / "proc/loadavg").write_text("x y z\n")
    s = Resources(root, pod="p").sample()
    assert s["container"]["memory_usage"] is None and s["container"]["cpu_limit_cores"] is None
    assert s["container"]["memory_limit"] == 200 * MiB


def test_pod_name_prefers_pod_name_then_hostname():
    assert pod_name({"POD_NAME": "a", "HOSTNAME": "b"}) == "a"
    assert pod_name({"HOSTNAME": "b"}) == "b"
    assert pod_name({}) != ""
    assert Resources(DATA / "absent", env={"HOSTNAME": "web-7d9f-x2"}).pod == "web-7d9f-x2"


def test_this_machine_does_not_raise():
    s = Resources(pod="here").sample()
    ResourcesPayload.model_validate(s)
    assert s["resource"]["total_memory"] > 0 and s["resource"]["cpus"]


@pytest.mark.parametrize("text, n", [("0-3", 4), ("0-3,8,10-11\n", 7), ("5", 1), ("", None), ("x", None),
                                     ("0-", None), (None, None)])
def test_cpuset_lists_are_counted(text, n):
    assert parse_cpu_list(text) == n


def test_this_machine_says_how_many_cpus_the_process_may_use():
    import os
    c = Resources("/", pod="p").container()
    assert 1 <= c["cpu_cores"] <= (os.cpu_count() or 1)     # its cpuset, else its affinity
