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


def test_a_mirror_several_versions_behind_gets_what_changed_since_not_a_snapshot():
    d = Directory(1)
    for i in range(200):
        d.set(entry(i))
    d.publish()
    m = mirror_of(d)
    for i in range(200, 330):  # a join storm: more than one message of changes, over several versions
        d.set(entry(i))
        if i % 40 == 0:
            d.publish()
    d.remove(entry(3).addr)
    d.publish()
    msgs = through_the_wire(d.messages_for(m.version))
    assert all(x["base"] is not None for x in msgs) and len(msgs) >= 2
    assert sum(len(x["nodes"]) for x in msgs) == 130  # what changed, not the 329 there are
    for x in msgs:
        assert m.apply(x)
    assert m.version == d.version and m.entries == d.entries


def test_a_lost_delta_is_repaired_from_where_the_mirror_stopped():
    d = Directory(1)
    for i in range(10):
        d.set(entry(i))
    d.publish()
    m = mirror_of(d)
    for i in range(10, 400):
        d.set(entry(i))
        if i % 50 == 0:
            d.publish()
    d.publish()
    first, *rest = through_the_wire(d.messages_for(m.version))
    assert rest and m.apply(first)  # the rest is lost; the mirror's next ping reports where it is
    for x in through_the_wire(d.messages_for(m.version)):
        assert m.apply(x)
    assert m.version == d.version and m.entries == d.entries


def test_a_burst_of_changes_bigger_than_a_message_goes_as_deltas_and_survives_a_loss():
    """Finding (3,000 nodes joining three relays): one publish held more changes than a
    message, so every member got a full snapshot instead, again and again during the storm."""
    d = Directory(1)
    d.set(entry(0))
    d.publish()
    m, lossy = mirror_of(d), mirror_of(d)
    for i in range(1, 300):  # one publish's worth of joins
        d.set(entry(i))
    d.publish()
    msgs = through_the_wire(d.messages_for(m.version))
    assert len(msgs) >= 5 and all(x["base"] is not None for x in msgs)
    for x in msgs:
        assert m.apply(x)
    assert m.version == d.version and m.entries == d.entries
    for x in msgs[:2] + msgs[3:]:  # the third is lost
        lossy.apply(x)
    assert lossy.version != d.version  # it stopped where the chain broke, and says so in its ping
    for x in through_the_wire(d.messages_for(lossy.version)):
        assert lossy.apply(x)
    assert lossy.version == d.version and lossy.entries == d.entries


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


def biggest_entry(i):
    """A member that makes its entry as large as a join lets it: the longest name, all routes
    and LAN endpoints, the longest endpoint, every capability."""
    from tunneld.proto.version import MAX_CAP_LEN, MAX_CAPS, Hello
    name = (f"{i:03d}" + "a" * 250)[:253]
    routes = tuple(f"198.18.{r}.128/25" for r in range(messages.MAX_ROUTES))
    lan = tuple(f"[2001:db8::{j:x}:ffff:ffff:ffff]:65535" for j in range(messages.MAX_LAN))
    caps = frozenset(f"{c:02d}".ljust(MAX_CAP_LEN, "c") for c in range(MAX_CAPS))
    return Entry(name, bytes([100, 64, 1, i]), bytes([i]) * 32, True, "[2001:db8::ffff:ffff:ffff]:65535",
                 1500, routes, lan, Hello(2, 1, caps))


def test_members_that_make_their_entries_huge_cannot_freeze_the_directory():
    """Finding: chunks held 64 entries whatever their size, and 24 crafted members made a
    chunk over the 16,384 bytes a node accepts: every node dropped it and the directory froze
    for everyone, revocations and key changes included."""
    from tunneld.control.directory import CHUNK_BYTES
    assert biggest_entry(1).size() * 8 < CHUNK_BYTES  # what a join lets in is bounded: chunks hold several
    d = Directory(1)
    for i in range(100):
        d.set(entry(i))
    for i in range(24):
        d.set(biggest_entry(i))
    d.publish()
    msgs = d.messages_for(None)
    assert all(len(messages.encode(m)) <= messages.MAX_MESSAGE for m in msgs)
    m = mirror_of(d)
    assert m.version == d.version and m.entries == d.entries
    # a delta with crafted members in it still reaches a mirror that holds the base
    for i in range(24, 40):
        d.set(biggest_entry(i))
    d.remove(entry(5).addr)
    d.publish()
    for msg in through_the_wire(d.messages_for(m.version)):
        m.apply(msg)
    assert m.version == d.version and m.entries == d.entries
