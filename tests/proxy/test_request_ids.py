"""X-Request-Id values the sidecar makes: 32 hex digits, a per-process prefix, then a counter, unique
across the 256-id blocks the generator formats at once, and across a fork (workers)."""

from __future__ import annotations

import os

from decorator.proxy.tunnel import RequestIds, new_request_id


def test_ids_count_up_across_block_boundaries():
    ids = RequestIds()
    got = [ids.next() for _ in range(70_000)]
    assert len(set(got)) == len(got)
    assert {len(i) for i in got} == {32}
    prefix = got[0][:16]
    assert all(i[:16] == prefix for i in got)
    assert [int(i[16:], 16) for i in got] == list(range(1, 70_001))


def test_reseed_changes_the_prefix_and_restarts_the_counter():
    ids = RequestIds()
    first = [ids.next() for _ in range(300)]
    ids.reseed()
    again = ids.next()
    assert again[:16] != first[0][:16] and again[16:] == "0" * 15 + "1"


def test_a_forked_child_does_not_repeat_its_parents_ids():
    parent = new_request_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write one id and leave at once
        os.write(w, new_request_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64).decode()
    os.waitpid(pid, 0)
    assert len(child) == 32 and child[:16] != parent[:16]
