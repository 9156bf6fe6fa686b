"""decorator.reload.Reloader against a directory rewritten exactly as the kubelet rewrites a ConfigMap
volume, plus the subPath heuristic on injected mountinfo text."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from k8s_helpers import json_build, rules_json, until
from kubelet_volume import ConfigMapVolume

from decorator.reload import Reloader, parse_mountinfo, subpath_warnings


class Swaps:
    def __init__(self) -> None:
        self.objs: list = []

    def __call__(self, obj) -> None:
        self.objs.append(obj)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.objs[-1].ruleset.rules]


@pytest.fixture
async def make(volume):
    made: list[Reloader] = []

    async def _make(**kw) -> tuple[Reloader, Swaps]:
        swaps = Swaps()
        r = Reloader([str(volume.root)], kw.pop("build", json_build), swaps, **kw)
        await r.start()
        made.append(r)
        return r, swaps

    yield _make
    for r in made:
        await r.close()


async def test_start_loads_and_reports(make, volume):
    r, swaps = await make(watch=False, poll_interval=0)
    assert swaps.names == ["a"]
    st = r.status()
    assert st["active"]["rules"] == 1 and st["active"]["names"] == ["a"]
    assert st["active"]["files"] == [str(volume.root / "rules.json")]
    assert len(st["active"]["digest"]) == 64
    assert st["last_reload"] is None and st["reloads_total"] == 0 and st["reload_failures_total"] == 0


async def test_valid_update_is_swapped_in_within_2s(make, volume):
    r, swaps = await make(poll_interval=0)
    before = r.status()["active"]["digest"]
    assert volume.write({"rules.json": rules_json("a", "b")})
    await until(lambda: len(swaps.objs) == 2, 2.0, "the kubelet-style update swapped in")
    assert swaps.names == ["a", "b"]
    st = r.status()
    assert st["active"]["digest"] != before
    assert st["reloads_total"] == 1
    assert st["last_reload"]["ok"] is True and st["last_reload"]["reason"] == "watch"


async def test_broken_update_is_kept_out_with_its_errors(make, volume, caplog):
    caplog.set_level(logging.INFO, "decorator.reload")
    r, swaps = await make(poll_interval=0)
    good = r.status()["active"]
    volume.write({"rules.json": '{"rules": [\n  "a",\n  oops\n]}\n'})
    await until(lambda: r.reload_failures_total == 1, 2.0, "the broken update was rejected")
    st = r.status()
    assert st["active"] == good and len(swaps.objs) == 1
    assert st["last_reload"]["ok"] is False
    [err] = st["last_reload"]["errors"]
    assert (err["file"], err["line"], err["col"]) == (str(volume.root / "rules.json"), 3, 3)
    assert f"{volume.root / 'rules.json'}:3:3: Expecting value" in caplog.text

    # fixed: the next update goes in and the failure is cleared
    volume.write({"rules.json": rules_json("a", "c")})
    await until(lambda: len(swaps.objs) == 2, 2.0, "the fixed update swapped in")
    assert swaps.names == ["a", "c"]
    assert r.status()["last_reload"]["ok"] is True


async def test_reverting_a_broken_update_clears_the_failure_without_swapping(make, volume):
    r, swaps = await make(poll_interval=0)
    volume.write({"rules.json": "{"})
    await until(lambda: r.reload_failures_total == 1, 2.0, "broken update rejected")
    volume.write({"rules.json": rules_json("a")})
    await until(lambda: r.status()["last_reload"]["ok"], 2.0, "revert noticed")
    assert r.status()["last_reload"]["unchanged"] is True
    assert len(swaps.objs) == 1 and r.reloads_total == 0


async def test_same_content_rewrite_does_not_swap(make, volume):
    r, swaps = await make(poll_interval=0)
    checks = r.checks_total
    assert volume.write({"rules.json": rules_json("a")}, force=True)
    await until(lambda: r.checks_total > checks, 2.0, "the no-op event was looked at")
    assert len(swaps.objs) == 1
    assert r.reloads_total == 0 and r.reload_failures_total == 0 and r.last_reload is None


async def test_a_new_file_in_the_configmap_is_picked_up(make, volume):
    _, swaps = await make(poll_interval=0)
    volume.write({"rules.json": rules_json("a"), "more.json": rules_json("z")})
    await until(lambda: len(swaps.objs) == 2, 2.0, "new key swapped in")
    assert swaps.names == ["z", "a"]  # files load in name order: more.json, rules.json
    volume.write({"rules.json": rules_json("a")})  # key removed: its link goes, the rule too
    await until(lambda: len(swaps.objs) == 3, 2.0, "removed key swapped out")
    assert swaps.names == ["a"] and not os.path.lexists(volume.root / "more.json")


async def test_manual_reload_and_a_real_sighup(make, volume):
    r, swaps = await make(watch=False, poll_interval=0)
    volume.write({"rules.json": rules_json("a", "b")})
    assert await r.reload("manual") is True
    assert swaps.names == ["a", "b"] and r.last_reload["reason"] == "manual"
    assert await r.reload("manual") is False  # nothing changed since

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, r.trigger, "SIGHUP")
    try:
        volume.write({"rules.json": rules_json("a", "b", "c")})
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: len(swaps.objs) == 3, 2.0, "SIGHUP reload")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
    assert swaps.names == ["a", "b", "c"] and r.last_reload["reason"] == "SIGHUP"


async def test_poll_fallback_without_watching(make, volume):
    r, swaps = await make(watch=False, poll_interval=0.05)
    volume.write({"rules.json": rules_json("p")})
    await until(lambda: len(swaps.objs) == 2, 2.0, "poll picked the update up")
    assert swaps.names == ["p"] and r.last_reload["reason"] == "poll"

    volume.write({"rules.json": "nope"})
    await until(lambda: r.reload_failures_total == 1, 2.0, "poll rejected the broken update")
    polls = r.polls_total
    await until(lambda: r.polls_total >= polls + 5, 2.0, "more polls")
    # unchanged broken files are reported once, not on every poll
    assert r.reload_failures_total == 1 and r.checks_total == 3
    assert swaps.names == ["p"]


async def test_unexpected_errors_are_logged_and_survived(make, volume, caplog):
    calls = {"n": 0}

    def flaky(paths):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ZeroDivisionError("a bug in the compiler")
        return json_build(paths)

    r, swaps = await make(build=flaky, watch=False, poll_interval=0)
    volume.write({"rules.json": rules_json("a", "b")})
    assert await r.reload("manual") is False
    assert r.reload_failures_total == 1
    assert "internal error: ZeroDivisionError" in r.last_reload["errors"][0]["message"]
    assert "Traceback" in caplog.text and "a bug in the compiler" in caplog.text
    assert await r.reload("manual") is True
    assert swaps.names == ["a", "b"]


async def test_on_swap_failure_keeps_the_old_rules(volume):
    installed = []

    def on_swap(obj):
        if installed:
            raise RuntimeError("cannot install")
        installed.append(obj)

    r = Reloader([str(volume.root)], json_build, on_swap, watch=False, poll_interval=0)
    await r.start()
    try:
        digest = r.status()["active"]["digest"]
        volume.write({"rules.json": rules_json("x")})
        assert await r.reload("manual") is False
        assert r.status()["active"]["digest"] == digest and r.reload_failures_total == 1
    finally:
        await r.close()


async def test_invalid_rules_at_start_refuse_to_start(volume):
    from decorator.errors import RulesInvalid

    volume.write({"rules.json": "{"})
    r = Reloader([str(volume.root)], json_build, lambda obj: None, watch=False, poll_interval=0)
    with pytest.raises(RulesInvalid):
        await r.start()
    await r.close()


async def test_watch_survives_the_directory_vanishing(make, volume, tmp_path):
    import shutil

    r, swaps = await make(poll_interval=0.05)
    shutil.rmtree(volume.root)
    await until(lambda: r.reload_failures_total >= 1, 2.0, "missing directory reported")
    assert len(swaps.objs) == 1  # the last good rules stay
    volume.root.mkdir()
    volume.write({"rules.json": rules_json("back")})
    await until(lambda: len(swaps.objs) == 2, 2.0, "directory back")
    assert swaps.names == ["back"]


async def test_close_stops_watching(make, volume):
    r, _ = await make(poll_interval=0.05)
    tasks = list(r._tasks)
    assert len(tasks) == 2  # one watcher (the directory) and the poller
    await r.close()
    assert all(t.done() for t in tasks)


# -- subPath detection ------------------------------------------------------------------------------

KUBELET = "/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~configmap/rules"


def _mountinfo(*mounts: tuple[str, str]) -> str:
    lines = ["22 1 0:21 / / rw,relatime - overlay overlay rw"]
    for i, (root, point) in enumerate(mounts):
        esc = point.replace(" ", "\\040")
        lines.append(f"{30 + i} 22 8:1 {root} {esc} ro,relatime - ext4 /dev/sda1 rw")
    return "\n".join(lines) + "\n"


def test_configmap_directory_mount_is_fine(volume):
    info = _mountinfo((KUBELET, str(volume.root)))
    assert subpath_warnings([str(volume.root)], info) == []


def test_subpath_file_mount_is_flagged(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "rules.yaml").write_text("rules: []\n")
    info = _mountinfo((KUBELET + "/..2026_11_26_20_10_11.123456789/rules.yaml", str(d / "rules.yaml")))
    for given in (d, d / "rules.yaml"):  # RULES may name the directory or the file
        [w] = subpath_warnings([str(given)], info)
        assert str(d / "rules.yaml") in w and "subPath" in w


def test_subpath_directory_mount_is_flagged_only_from_a_kubelet_volume(tmp_path):
    d = tmp_path / "rules dir"
    d.mkdir()
    (d / "rules.yaml").write_text("rules: []\n")
    flagged = _mountinfo((KUBELET + "/..2026_11_26_20_10_11.123456789/rules", str(d)))
    [w] = subpath_warnings([str(d)], flagged)
    assert "directory bind mount" in w
    plain = _mountinfo(("/home/me/project/rules", str(d)))  # docker -v / a PVC: updates normally
    assert subpath_warnings([str(d)], plain) == []


def test_not_a_mount_point_and_unreadable_mountinfo(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    assert subpath_warnings([str(d)], _mountinfo((KUBELET, "/elsewhere"))) == []
    assert subpath_warnings([str(d)], "") == []
    assert isinstance(subpath_warnings([str(d)]), list)  # the real /proc/self/mountinfo parses


def test_parse_mountinfo_unescapes_octal():
    info = "36 35 98:0 /a\\040b /mnt/with\\040space\\011tab rw,noatime master:1 - ext3 /dev/root rw\n"
    assert parse_mountinfo(info) == {"/mnt/with space\ttab": "/a b"}


async def test_a_rules_file_is_watched_through_its_directory(tmp_path):
    # RULES may name one file; editors (and `kubectl cp`) replace it, which a watch on the file would lose.
    f = tmp_path / "rules.json"
    f.write_text(rules_json("one"))
    swaps = Swaps()
    r = Reloader([str(f)], json_build, swaps, poll_interval=0)
    await r.start()
    try:
        tmp = tmp_path / ".rules.json.swp"
        tmp.write_text(rules_json("one", "two"))
        os.replace(tmp, f)
        await until(lambda: len(swaps.objs) == 2, 2.0, "replaced file swapped in")
        assert swaps.names == ["one", "two"]
    finally:
        await r.close()


async def test_adopt_records_rules_installed_by_the_caller(volume):
    digest, obj = json_build([str(volume.root)])
    swaps = Swaps()
    r = Reloader([str(volume.root)], json_build, swaps, watch=False, poll_interval=0)
    r.adopt(digest, obj)
    await r.start()  # does not load again
    try:
        assert swaps.objs == [] and r.status()["active"]["digest"] == digest
        assert await r.reload("SIGHUP") is False  # same digest: nothing to swap
        assert r.counters() == {"reloads": 0, "reload_failures": 0}
    finally:
        await r.close()


async def test_a_swap_during_the_build_never_installs_a_mix(tmp_path):
    # The kubelet can swap ..data between two files a build reads. Without a guard the build would
    # return old a.json + new b.json, a rule set that never existed, and keep it if the new payload
    # is broken. Here the swap happens exactly there, deterministically.
    vol = ConfigMapVolume(tmp_path / "rules")
    vol.write({"a.json": rules_json("a1"), "b.json": rules_json("b1")})
    race = {"payload": None}

    def racing_build(paths):
        d = paths[0]
        text_a = (Path(d) / "a.json").read_text()
        if race["payload"] is not None:
            vol.write(race["payload"])
            race["payload"] = None
        text_b = (Path(d) / "b.json").read_text()
        digest, obj = json_build(paths)  # for the files list only; names come from what was read
        names = json.loads(text_a)["rules"] + json.loads(text_b)["rules"]
        obj.ruleset.rules = [SimpleNamespace(name=n) for n in names]
        return digest + ":" + ",".join(names), obj

    swaps = Swaps()
    r = Reloader([str(vol.root)], racing_build, swaps, watch=False, poll_interval=0)
    await r.start()
    try:
        vol.write({"a.json": rules_json("a2"), "b.json": rules_json("b2")})
        race["payload"] = {"a.json": rules_json("a3"), "b.json": rules_json("b3")}
        assert await r.reload("manual") is True
        assert [o.ruleset.rules[0].name + o.ruleset.rules[1].name for o in swaps.objs] == ["a1b1", "a3b3"]
    finally:
        await r.close()


def test_subpath_detection_on_a_real_bind_mount(tmp_path):
    # A real mount namespace when the sandbox allows one (root, or user namespaces): the kubelet's
    # subPath is exactly this bind mount of a file or directory out of a timestamped payload dir.
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) to make a private mount namespace")
    vol = tmp_path / "pods/uid/volumes/kubernetes.io~configmap/rules"
    payload = vol / "..2026_11_26_20_10_11.123456789"
    payload.mkdir(parents=True)
    (payload / "rules.yaml").write_text("rules: []\n")
    file_dir, dir_mount, plain = tmp_path / "file", tmp_path / "dir", tmp_path / "plain"
    for d in (file_dir, dir_mount, plain):
        d.mkdir()
    (file_dir / "rules.yaml").write_text("")
    (plain / "rules.yaml").write_text("rules: []\n")
    script = (
        f"mount --bind {payload / 'rules.yaml'} {file_dir / 'rules.yaml'} && "
        f"mount --bind {payload} {dir_mount} && "
        f"exec {sys.executable} -c 'import json, sys; from decorator.reload import subpath_warnings; "
        f"print(json.dumps([subpath_warnings([p]) for p in sys.argv[1:]]))' {file_dir} {dir_mount} {plain}")
    proc = subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30, check=False)
    err = proc.stderr.lower()
    if proc.returncode != 0 and ("mount" in err or "unshare" in err):
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    file_w, dir_w, plain_w = json.loads(proc.stdout)
    assert len(file_w) == 1 and str(file_dir / "rules.yaml") in file_w[0] and "file bind mount" in file_w[0]
    assert len(dir_w) == 1 and "directory bind mount" in dir_w[0]
    assert plain_w == []
