"""The versioned member list: deltas when they apply, snapshots otherwise."""

from tunneld.control.directory import Directory, DirectoryMirror, Entry
from tunneld.proto import messages


def entry(i, online=True):
    return Entry(f"node{i}", bytes([100, 64, i // 256, i % 256]), bytes([i % 256]) * 32, online, "")


def through_the_wire(msgs):
    return [messages.decode_control(messages.encode(m)) for m in msgs]


def mirror_of(directory):
    """A node's mirror, brought up to date from nothing."""
    m = DirectoryMirror()
    for msg in through_the_wire(directory.messages_for(None)):
        m.apply(msg)
    return m


def test_snapshot_then_deltas():
    d = Directory(1000)
    for i in range(3):
        d.set(entry(i))
    d.publish()
    m = mirror_of(d)
    assert m.version == d.version and m.entries == d.entries
    d.set(entry(1, online=False))
    d.remove(entry(2).addr)
    d.publish()
    delta = through_the_wire(d.messages_for(m.version))
    assert len(delta) == 1 and delta[0]["base"] is not None
    assert m.apply(delta[0])
    assert m.entries == d.entries and not m.entries[entry(1).addr].online


def test_no_change_no_version():
    d = Directory(5)
    d.set(entry(1))
    d.publish()
    v = d.version
    d.set(entry(1))
    assert not d.dirty
    d.publish()
    assert d.version == v and d.messages_for(v) == []


def test_a_stale_mirror_gets_a_snapshot_not_a_delta():
    d = Directory(1)
    d.set(entry(1))
    d.publish()
    d.set(entry(2))
    d.publish()
    d.set(entry(3))
    d.publish()
    msgs = d.messages_for(d.version - 2)
    assert all(m["base"] is None for m in msgs)


def test_a_delta_for_another_base_is_ignored():
    d = Directory(1)
    d.set(entry(1))
    d.publish()
    m = mirror_of(d)
    d.set(entry(2))
    d.publish()
    d.set(entry(3))
    d.publish()
    stale_delta = {"t": "dir", "v": d.version, "base": d.version - 5, "i": 0, "c": 1, "mtu": 1432,
                   "nodes": [tuple(entry(3).wire())], "gone": []}
    assert not m.apply(stale_delta)
    assert entry(3).addr not in m.entries


def test_big_snapshot_in_chunks_in_any_order():
    d = Directory(7)
    for i in range(300):
        d.set(entry(i))
    d.publish()
    msgs = through_the_wire(d.snapshot())
    assert len(msgs) == 5 and all(m["c"] == 5 for m in msgs)
    m = DirectoryMirror()
    results = [m.apply(msg) for msg in reversed(msgs)]
    assert results == [False] * 4 + [True]
    assert len(m.entries) == 300


def test_a_restarted_relay_resynchronises_every_mirror():
    old = Directory(1000)
    old.set(entry(1))
    old.publish()
    m = mirror_of(old)
    new = Directory(2000)  # a new process starts from a new version
    new.set(entry(1))
    new.set(entry(2))
    new.publish()
    assert new.messages_for(m.version)  # the mirror's version means nothing to it
