"""Many lightweight nodes in one process, for the relay's scale cell.

Each is tunneld's own relay link (engine/relaylink.py: handshake, join, pings, rekeys)
and directory mirror on a UDP socket of its own, without the peers a real node keeps,
so that one process can hold thousands of them. Like a real node, it reports the
directory version it holds in every ping, so the relay sends it only what changed.
What a real node does with the directory's entries (checking each, building peers) is
N x N work when N nodes share one process and one core, where real nodes spread it over
N machines: here each node only unpacks the directory messages and follows their
versions (VersionMirror), so that the swarm measures the relay, not itself. Prints one JSON line when all have
joined (or the time is up), then keeps them connected, pinging the relay as real
nodes do, until it is stopped.

Usage: python bench/swarm.py RELAY_IP:PORT[,RELAY_IP:PORT...] TOKEN COUNT TIMEOUT [BLAST SIZE SECONDS]
(several relays of one network: node i is homed on relay i mod their number, and knows
them all, as `join --relay A,B,C` would)

With BLAST, the relay's own capacity instead: once all have joined, the first half of the
nodes send RELAYED datagrams of SIZE bytes as fast as UDP segmentation offload lets one
process send (trains of 32 per sendmsg), each to a node of the second half, for SECONDS;
the second half counts what the relay forwarded. The payloads are not sealed: a relay
forwards without reading them. Prints one more JSON line: datagrams and bytes forwarded
per second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import struct
import sys
import time

import msgpack

from tunneld.engine import relaylink
from tunneld.engine.relaylink import DIRECTORY, JOINED, REFUSED, JoinRequest, RelayLink
from tunneld.net.base import real_env, run
from tunneld.proto import wire
from tunneld.proto.handshake import Identity
from tunneld.proto.token import JoinToken


_decode = relaylink.decode_control


def _lean_decode(plaintext: bytes, drops):
    """Of a directory message, only the fields before its entries (see the top); the rest as
    nodes do."""
    if b"\xa3dir" not in plaintext[:16]:
        return _decode(plaintext, drops)
    u = msgpack.Unpacker(raw=False)
    u.feed(plaintext)
    msg = {}
    for _ in range(u.read_map_header()):
        key = u.unpack()
        if key == "nodes":
            break
        msg[key] = u.unpack()
    return msg


relaylink.decode_control = _lean_decode


class VersionMirror:
    """The directory version a node holds, as DirectoryMirror would hold it, without the entries."""

    def __init__(self):
        self.version = None
        self._partial: tuple[int, set] | None = None

    def apply(self, msg: dict) -> bool:
        if msg["base"] is not None:
            if msg["base"] != self.version:
                return False
            self.version = msg["v"]
            return True
        if self._partial is None or self._partial[0] != msg["v"]:
            self._partial = (msg["v"], set())
        self._partial[1].add(msg["i"])
        if len(self._partial[1]) < msg["c"]:
            return False
        self.version, self._partial = msg["v"], None
        return True


class SwarmNode:
    """One relay link on its own socket; it is its own Transmit (there is no TUN)."""

    def __init__(self, swarm: "Swarm", i: int):
        self.swarm = swarm
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        # As a node's (net/base.py): a snapshot of thousands of entries arrives as one burst.
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE, as root
        self.sock.bind(("0.0.0.0", 0))
        self.joined_at: float | None = None
        self.address: bytes | None = None
        self.mirror = VersionMirror()
        token = swarm.token
        home = i % len(swarm.relays)
        self.relay = swarm.relays[home]
        order = [f"{h}:{p}" for h, p in swarm.relays[home:] + swarm.relays[:home]]
        self.link = RelayLink(Identity.generate(), token.relay_public, JoinRequest(f"swarm-{i:04d}", token.credential),
                              self, real_env(), time.monotonic(), relays=tuple(order))

    def send(self, ep, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.relay)
        except OSError:
            pass

    def write_tun(self, packet: bytes) -> None:
        pass

    def relay_transport(self, tcp: bool) -> None:
        pass

    def relay_endpoint(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.relay = (host, int(port))

    def readable(self) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                data, _addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            event = self.link.receive(data, now)
            if event is None:
                continue
            if event[0] == DIRECTORY:
                if self.mirror.apply(event[1]):
                    self.link.directory_version = self.mirror.version
            elif event[0] == JOINED and self.joined_at is None:
                self.joined_at = time.monotonic()
                self.address = ipaddress.IPv4Address(event[1]["address"]).packed
                self.swarm.joined += 1
            elif event[0] == REFUSED:
                self.swarm.refusals.append(event[1][1])


class Swarm:
    def __init__(self, relay: str, token: str, count: int):
        self.relays = [(h, int(p)) for h, p in (r.rsplit(":", 1) for r in relay.split(","))]
        self.token = JoinToken.parse(token)
        self.count = count
        self.joined = 0
        self.refusals: list[str] = []
        self.next_stats = 0.0

    def blast(self, members: list, size: int, seconds: float) -> dict:
        """The first half sends to the second, in trains; the second half counts. One thread,
        sending and draining in turn, so that neither side waits on the other."""
        from tunneld.net.udpio import SOL_UDP, UDP_GRO, UDP_SEGMENT, receive_batch
        half = len(members) // 2
        senders, receivers = members[:half], members[half:2 * half]
        trains = []
        for s, r in zip(senders, receivers):
            datagram = bytes((wire.RELAYED, 0, 0, 0)) + r.address + bytes(max(0, size - 8))
            trains.append((s.sock, [datagram] * 32, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", len(datagram)))],
                           s.relay))
        for r in receivers:
            r.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        got = nbytes = sent = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            for sock, bufs, anc, relay in trains:
                try:
                    sock.sendmsg(bufs, anc, 0, relay)
                    sent += len(bufs)
                except OSError:
                    pass  # our own buffer is full: the relay is behind
            for r in receivers:
                for _ in range(64):
                    try:
                        datagrams, _, _ = receive_batch(r.sock, True)
                    except BlockingIOError:
                        break
                    for d in datagrams:
                        if d[:1] == bytes((wire.RELAYED,)):
                            got += 1
                            nbytes += len(d)
        elapsed = time.monotonic() - t0
        return {"size": size, "senders": half, "seconds": round(elapsed, 2), "sent": sent,
                "forwarded_pps": got / elapsed, "forwarded_gbps": nbytes * 8 / elapsed / 1e9}

    async def main(self, timeout: float, blast: tuple | None = None) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        members = []
        for i in range(self.count):
            m = SwarmNode(self, i)
            loop.add_reader(m.sock.fileno(), m.readable)
            m.link.tick(time.monotonic())
            members.append(m)
        reported = False
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for m in members:
                m.link.tick(now)
            if now >= self.next_stats:  # for whoever reads stderr (the bench does not)
                self.next_stats = now + 5
                failovers = sum(m.link.counts["relay_failovers"] for m in members)
                print(json.dumps({"t": round(now - started, 1), "up": sum(m.link.up for m in members),
                                  "failovers": failovers}), file=sys.stderr, flush=True)
            if not reported and (self.joined == self.count or now - started > timeout):
                reported = True
                times = sorted(m.joined_at - started for m in members if m.joined_at is not None)
                print(json.dumps({"joined": self.joined, "count": self.count,
                                  "all_joined_s": times[-1] if len(times) == self.count else None,
                                  "median_s": times[len(times) // 2] if times else None,
                                  "p90_s": times[len(times) * 9 // 10] if times else None,
                                  "p99_s": times[len(times) * 99 // 100] if times else None,
                                  "refusals": self.refusals[:3]}), flush=True)
                if blast is not None:
                    await asyncio.sleep(1.0)  # the last joins' directory traffic settles
                    print(json.dumps(self.blast(members, *blast)), flush=True)


if __name__ == "__main__":
    relay, token, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    blast = (int(sys.argv[6]), float(sys.argv[7])) if sys.argv[5:6] == ["BLAST"] else None
    run(Swarm(relay, token, count).main(timeout, blast))
