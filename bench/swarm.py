"""Many lightweight nodes in one process, for the relay's scale cell.

Each is tunneld's own sans-IO node engine (proto, handshake, join, directory, pings)
on a UDP socket of its own; only the per-peer state a real node keeps for direct
paths is left out (`_sync_peers`), so that one process can hold hundreds of them.
Prints one JSON line when all have joined (or the time is up), then keeps them
connected, pinging the relay as real nodes do, until it is stopped.

Usage: python bench/swarm.py RELAY_IP:PORT TOKEN COUNT TIMEOUT
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from tunneld.engine.node import Node
from tunneld.net.base import run
from tunneld.proto.handshake import Identity
from tunneld.proto.token import JoinToken


class LightNode(Node):
    def _sync_peers(self, now: float) -> None:
        pass


class Member:
    def __init__(self, swarm: "Swarm", i: int):
        self.swarm = swarm
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("0.0.0.0", 0))
        self.joined_at: float | None = None
        self.engine = LightNode(Identity.generate(), swarm.token.relay_public, f"swarm-{i:04d}",
                                swarm.token.credential, self, time.monotonic())

    def send(self, ep, data: bytes) -> None:
        try:
            self.sock.sendto(data, self.swarm.relay)
        except OSError:
            pass

    def write_tun(self, packet: bytes) -> None:
        pass

    def joined(self, assignment) -> None:
        if self.joined_at is None:
            self.joined_at = time.monotonic()
            self.swarm.joined += 1

    def refused(self, code: str, message: str) -> None:
        self.swarm.refusals.append(message)

    def relay_transport(self, tcp: bool) -> None:
        pass

    def set_mtu(self, mtu: int) -> None:
        pass

    def set_routes(self, prefixes) -> None:
        pass

    def readable(self) -> None:
        now = time.monotonic()
        for _ in range(64):
            try:
                data, _addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            self.engine.receive(data, self.engine_relay, now)

    @property
    def engine_relay(self):
        from tunneld.engine.node import RELAY
        return RELAY


class Swarm:
    def __init__(self, relay: str, token: str, count: int):
        host, port = relay.rsplit(":", 1)
        self.relay = (host, int(port))
        self.token = JoinToken.parse(token)
        self.count = count
        self.joined = 0
        self.refusals: list[str] = []

    async def main(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        members = []
        for i in range(self.count):
            m = Member(self, i)
            loop.add_reader(m.sock.fileno(), m.readable)
            m.engine.tick(time.monotonic())
            members.append(m)
        reported = False
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for m in members:
                m.engine.tick(now)
            if not reported and (self.joined == self.count or now - started > timeout):
                reported = True
                times = sorted(m.joined_at - started for m in members if m.joined_at is not None)
                print(json.dumps({"joined": self.joined, "count": self.count,
                                  "all_joined_s": times[-1] if len(times) == self.count else None,
                                  "median_s": times[len(times) // 2] if times else None,
                                  "refusals": self.refusals[:3]}), flush=True)


if __name__ == "__main__":
    relay, token, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    run(Swarm(relay, token, count).main(timeout))
