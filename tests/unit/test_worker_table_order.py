"""A node with workers tells them of new keys before anything it sends lets the peer use
them (net/noded.py send): the peer's first data on a new session must not find a worker
without it. A real engine (the in-memory network's) and a real SOCK_SEQPACKET pair, as a
worker's control socket is."""

import socket

import msgpack

from tunneld.net.node_workers import NodeWorkers
from tunneld.net.noded import NodeDaemon
from tests.sim.simnet import SimNet


class Recorder:
    """The data plane's batch: at each send, what the worker's end of the socket holds."""

    def __init__(self, worker_end):
        self.worker_end = worker_end
        self.seen: list = []

    def send(self, data, ep):
        tables = []
        while True:
            try:
                msg = self.worker_end.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            assert msg[:1] == b"T"
            tables.append(msgpack.unpackb(msg[1:]))
        self.seen.append((data, tables))


def test_new_keys_reach_the_workers_before_the_packet_that_lets_the_peer_use_them():
    net = SimNet()
    for name in ("alpha", "bravo"):
        net.add_node(name)
    net.advance(2)
    net.send_ip("alpha", "bravo", b"first")
    net.send_ip("bravo", "alpha", b"answer")
    alpha = net.nodes["alpha"]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        d = NodeDaemon.__new__(NodeDaemon)
        d.engine, d.use_tcp, d.relay_addr = alpha, False, ("192.0.2.1", 7000)
        d.plane = type("Plane", (), {})()
        d.plane.batch = Recorder(theirs)
        w = NodeWorkers.__new__(NodeWorkers)
        w.ctls, w.count, w.daemon, w.version, w.udp6 = [ours], 2, d, -1, False
        w.sync(force=True)
        d.workers = w
        d.plane.batch.send(b"", None)  # take the first table
        (peer,) = alpha.peers.values()
        old = peer.keys.current.local_index
        alpha.handshakes.initiate(peer, net.now)
        net.deliver()  # a rekey: alpha now holds new keys its workers have not heard of
        new = peer.keys.current.local_index
        assert new != old
        d.send(("198.51.100.7", 4000), b"the keepalive that confirms them")
        data, tables = d.plane.batch.seen[-1]
        assert data == b"the keepalive that confirms them"
        assert tables and new in [s[0] for s in tables[-1]["sessions"]]
        d.send(("198.51.100.7", 4000), b"more")  # nothing new: no table
        assert d.plane.batch.seen[-1] == (b"more", [])
    finally:
        ours.close()
        theirs.close()
