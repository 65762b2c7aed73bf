"""Relay to relay (proto/mesh.py): only a relay of the network, of a live boot, gets through,
once per message."""

import os

from tunneld.drops import Drop
from tunneld.proto import mesh

SECRET = mesh.derive(b"k" * 32)


def pair():
    a, b = mesh.Mesh(SECRET, os.urandom(8)), mesh.Mesh(SECRET, os.urandom(8))
    a.set_boots([b.boot])
    b.set_boots([a.boot])
    return a, b


def test_a_relayed_message_crosses_with_its_addresses_and_only_once():
    a, b = pair()
    msg = a.seal(mesh.DATA, b"\x64\x40\x00\x01", b"\x64\x40\x00\x02", b"inner bytes")
    assert b.open(msg) == (mesh.DATA, a.boot, b"\x64\x40\x00\x01", b"\x64\x40\x00\x02", b"inner bytes")
    assert b.open(msg) is None and b.last_drop == Drop.MESH_REPLAY
    assert len(msg) == len(b"inner bytes") + mesh.OVERHEAD


def test_another_networks_relay_a_tampered_message_and_an_unlisted_boot_are_refused():
    a, b = pair()
    stranger = mesh.Mesh(mesh.derive(b"x" * 32), a.boot)  # same boot, another network's key
    assert b.open(stranger.seal(mesh.DATA, bytes(4), bytes(4), b"hi")) is None and b.last_drop == Drop.MESH_INVALID
    msg = bytearray(a.seal(mesh.DATA, bytes(4), bytes(4), b"hello"))
    msg[-20] ^= 1
    assert b.open(bytes(msg)) is None and b.last_drop == Drop.MESH_INVALID
    b.set_boots([])  # a's lease ended: its messages are no longer taken
    assert b.open(a.seal(mesh.DATA, bytes(4), bytes(4), b"late")) is None and b.last_drop == Drop.MESH_UNKNOWN_RELAY
    assert b.open(b"\x07short") is None and b.last_drop == Drop.MESH_MALFORMED
