"""The per-packet budget: microseconds of each stage of tunneld's data path, per packet.

Each stage runs tunneld's own code (and, for the system calls, the real kernel objects: a
TUN device with offload, UDP sockets with GSO and GRO) in a network namespace of its own,
on full-size TCP segments as the kernel hands them over under load: super-packets of
SEGMENTS segments, split, clamped, sealed and sent in trains; received in GRO trains,
opened, merged and written back as one super-packet. A stage's figure is its best of
ROUNDS rounds (the floor this machine allows), divided by the packets it handled.

  send side    tun read   one os.read of a super-packet (the kernel forwards one we wrote back
                          out of the TUN device, so that it arrives whole), per segment
               split      offload.split: the super-packet cut into IP packets
               clamp      mss.clamp on each (not a SYN: the common case)
               seal       Session.seal, AES-GCM (ChaCha20-Poly1305 without AES-NI)
               rest of from_tun   Node.from_tun_train (a super-packet's segments; before it,
                          Node.from_tun on each) around clamp and seal: the peer lookup,
                          counters (two node engines after a real handshake, tests/sim)
               send       udpio.Batch: a train of datagrams in one sendmsg (UDP_SEGMENT)
  receive side receive    udpio.read: one recvmsg of a GRO train, cut into datagrams
               open       Session.open, with the replay window
               rest of receive    Node.receive around open: the session lookup, the
                          endpoint and inner-source checks
               merge      offload.Coalescer: segments back into one super-packet
               tun write  one os.writev of it, per segment
  relay        forward    Relay.receive of a RELAYED datagram: look up, rewrite, hand on
  express      the same super-packet through the express path (net/_express.c) each way:
               cut, seal and send in C; receive, open in C, merged, written
  lone         a lone 84-byte packet's hop each way (lone()): back to back, and after 20 ms
               idle as a ping's are; Python path and express path

Usage: bin/bench --budget [--compare REV]   (or: python3 bench/budget.py [--compare REV], as root)
  --compare REV   the same stages of tunneld at REV (a tag or commit of this repository), in
                  the same run: before and after a change, on the same noisy machine
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if "--installed" not in sys.argv:
    sys.path[:0] = [os.path.dirname(HERE)]
else:  # the tunneld installed for `python -I` (--compare) first; the checkout's tests/ after it
    sys.path.append(os.path.dirname(HERE))

SEGMENTS = 44  # what one 64 KB super-packet holds at the overlay's MTU
MTU = 1432  # tunneld0's on a 1500-byte underlay
ROUNDS = 7
ITERATIONS = 200
NS = f"tdbudget{os.getpid()}"
TURNS = 3  # whole runs per revision, in turn


def interleaved(stages: list) -> dict:
    """Each stage (name, fn, packets, iterations) timed ROUNDS times, the stages taking turns
    round by round, so that the machine's noise falls on all of them alike; the best round
    of each, in µs per packet."""
    times: dict = {name: [] for name, *_ in stages}
    for _ in range(ROUNDS):
        for name, fn, packets, iterations in stages:
            t0 = time.perf_counter()
            for _ in range(iterations):
                fn()
            times[name].append((time.perf_counter() - t0) / iterations / packets * 1e6)
    return {name: min(v) for name, v in times.items()}


def in_turn(first, second) -> tuple[float, float]:
    """Two system calls that feed each other (a write and the read it makes possible), called
    in turn and timed each on its own: the best round of each, in µs per segment."""
    times: tuple[list, list] = ([], [])
    for _ in range(ROUNDS):
        t_first = t_second = 0.0
        for _ in range(ITERATIONS):
            t0 = time.perf_counter()
            first()
            t1 = time.perf_counter()
            second()
            t_first += t1 - t0
            t_second += time.perf_counter() - t1
        times[0].append(t_first / ITERATIONS / SEGMENTS * 1e6)
        times[1].append(t_second / ITERATIONS / SEGMENTS * 1e6)
    return min(times[0]), min(times[1])


def tcp_super(src: bytes, dst: bytes, segments: int, size: int) -> bytes:
    """A TCPV4 super-packet as the kernel writes one to the TUN device: IPv4 + TCP header
    (20 + 32 bytes, with timestamps) and segments * size bytes, checksum left partial."""
    from tunneld.engine.checksum import ip_header, pseudo_sum
    total = 52 + segments * size
    ip = bytearray(20)
    ip[0], ip[8], ip[9] = 0x45, 64, 6
    ip[2:4] = total.to_bytes(2, "big")
    ip[6] = 0x40  # DF
    ip[12:16], ip[16:20] = src, dst
    ip[10:12] = ip_header(bytes(ip)).to_bytes(2, "big")
    tcp = bytearray(32)
    tcp[0:2], tcp[2:4] = (40000).to_bytes(2, "big"), (5201).to_bytes(2, "big")
    tcp[4:8] = (1000).to_bytes(4, "big")
    tcp[12], tcp[13] = 8 << 4, 0x10  # ACK
    tcp[14:16] = (512).to_bytes(2, "big")
    tcp[20:32] = bytes((1, 1, 8, 10)) + bytes(8)
    tcp[16:18] = pseudo_sum(bytes(ip) + bytes(tcp) + bytes(segments * size), 6, total - 20).to_bytes(2, "big")
    return bytes(ip) + bytes(tcp) + os.urandom(segments * size)


def inner() -> dict:
    from collections import Counter

    from tunneld.engine.mss import clamp
    from tunneld.engine.offload import VNET_HDR_LEN, Coalescer, GSO_TCPV4, NEEDS_CSUM, _VNET, split
    from tunneld.host.tun import Tun
    from tunneld.net.udpio import Batch, enable_gro, read as udp_read
    from tunneld.proto import wire
    from tunneld.proto.session import Session

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    size = MTU - 52
    result: dict = {"segments": SEGMENTS, "mtu": MTU}
    # -- the TUN device: a super-packet written in is forwarded back out, and read whole
    tun = Tun.open("tdb0", persist=False, offload="tcp")  # the TCP path; the VXLAN one is split alike
    try:
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "addr", "add", "100.64.0.1/24", "dev", "tdb0")
        sh("ip", "link", "set", "tdb0", "mtu", str(MTU), "up")
        sh("ip", "route", "add", "100.64.1.0/24", "dev", "tdb0")
        for key, value in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.send_redirects", "0"),
                           ("net.ipv4.conf.tdb0.send_redirects", "0"), ("net.ipv4.conf.all.rp_filter", "0"),
                           ("net.ipv4.conf.tdb0.rp_filter", "0")):
            sh("sysctl", "-qw", f"{key}={value}")
        packet = tcp_super(bytes((100, 64, 1, 2)), bytes((100, 64, 1, 3)), SEGMENTS, size)
        vnet = _VNET.pack(NEEDS_CSUM, GSO_TCPV4, 52, size, 20, 16)
        fd = tun.fd
        got = []

        def round_trip():
            os.writev(fd, [vnet, packet])
            got.append(os.read(fd, VNET_HDR_LEN + 65535))

        for _ in range(20):
            round_trip()
        buf = got[-1]
        segs, reason = split(buf)
        result["tun_super_ok"] = len(segs) == SEGMENTS and not reason

        def write_only():
            os.writev(fd, [vnet, packet])

        def read_only():
            os.read(fd, VNET_HDR_LEN + 65535)

        result["tun_write"], result["tun_read"] = in_turn(write_only, read_only)
    finally:
        tun.close()

    # -- pure stages
    stages = [("split", lambda: split(buf), SEGMENTS, ITERATIONS),
              ("clamp", lambda: [clamp(p, 1380, 1330) for p in segs], SEGMENTS, ITERATIONS)]
    key = os.urandom(32)
    tx = Session(b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", wire.SUITE_AESGCM, key, key, True, 0.0)
    stages.append(("seal", lambda: [tx.seal(p) for p in segs], SEGMENTS, ITERATIONS))
    sealed = [tx.seal(p) for p in segs]

    def open_all():
        # A fresh receiver each time, its replay window empty (its making is in the figure:
        # about 0.1 µs a packet, alike for every revision)
        r = Session(b"\x02\x00\x00\x00", b"\x01\x00\x00\x00", wire.SUITE_AESGCM, key, key, False, 0.0)
        for m in sealed:
            r.open(m)
    stages.append(("open", open_all, SEGMENTS, ITERATIONS))

    def merge():
        c = Coalescer()
        for p in segs:
            c.add(p)
        return c.flush()
    merged = merge()
    result["merge_ok"] = len(merged) == 1
    stages.append(("merge", merge, SEGMENTS, ITERATIONS))

    # -- UDP: a train out in one sendmsg, in as one GRO read
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        b.bind(("127.0.0.1", 0))
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        gro = enable_gro(b)
        b.setblocking(False)
        addr = b.getsockname()
        drops, stats = Counter(), Counter()
        batch = Batch(a, drops, stats, 1472)
        datagrams = [wire.RELAYED.to_bytes(1, "big") + bytes(7) + m for m in sealed]

        def send_train():
            batch.active = True
            for d in datagrams:
                batch.send(d, addr)
            batch.active = False
            batch.flush()

        def receive_train():
            n = 0
            while n < SEGMENTS:
                got = udp_read(b, gro, drops, stats)
                if got is None:
                    break
                n += len(got[0])
            return n

        result["send"], result["receive"] = in_turn(send_train, receive_train)
        result["udp_gso"] = batch.gso and stats["udp_gso_sends"] > 0
        result["udp_gro"] = stats["udp_gro_reads"] > 0
    finally:
        a.close()
        b.close()

    relay_stages, relay_ok = engines(sealed)
    node_stages, node_ok = node_engines(segs)
    result.update(interleaved(stages + relay_stages + node_stages))
    result["forward_ok"] = relay_ok()
    result["engine_ok"] = node_ok()
    result.update(lone())
    result.update(express_train())
    return result


def node_engines(segs: list) -> dict:
    """Node.from_tun_train (Node.from_tun per packet before it) and Node.receive whole (peer
    lookup, clamp, seal; session lookup, source checks, open), on two node engines after a real handshake, wired by the simulation's
    in-memory network (tests/sim), with the TUN and the socket replaced by lists."""
    import ipaddress

    from tests.sim.simnet import public_pair
    net, a, b = public_pair()
    src = ipaddress.IPv4Address(a.assignment.address).packed
    dst = ipaddress.IPv4Address(b.assignment.address).packed
    packets = [p[:12] + src + dst + p[20:] for p in segs]
    sent = []

    class Out:
        def send(self, ep, data):
            sent.append(data)

        def write_tun(self, packet):
            pass
    a.out = b.out = Out()
    now = net.now
    from_tun = a.from_tun
    train = getattr(a, "from_tun_train", None)  # a super-packet's segments at once (since 0.3.0)

    def send_side():
        if train is not None:
            train(packets, now)
            return
        for p in packets:
            from_tun(p, now)
    path = [p for p in a.peers.values()][0].tx_ep
    sent.clear()
    iterations = 30
    for _ in range(ROUNDS * iterations):
        send_side()
    batches = [sent[i : i + len(packets)] for i in range(0, len(sent), len(packets))]
    ep = net.ios["a"].endpoint
    receive = b.receive
    it = iter(batches)

    def receive_side():
        for m in next(it):
            receive(m, ep, now)
    before = dict(b.drops)
    stages = [("engine_send", send_side, len(packets), iterations),
              ("engine_receive", receive_side, len(packets), iterations)]
    return stages, lambda: path != "relay" and dict(b.drops) == before


def engines(sealed: list) -> tuple[list, object]:
    """Relay.receive's forward: the relay engine's own code, on a member table of two."""
    from tunneld.engine.relay import Relay
    from tunneld.proto import wire

    # The relay's forward: its own code, on a member table of two.
    relay = Relay.__new__(Relay)
    sent = []
    relay.send = lambda ep, data: sent.append(data)
    relay.cluster = None

    class Member:
        __slots__ = ("endpoint", "relayed_prefix", "rx_bytes", "rx_packets", "tx_bytes")

        def __init__(self, ep, addr):
            self.endpoint = ep
            self.relayed_prefix = bytes((wire.RELAYED, 0, 0, 0)) + addr
            self.rx_bytes = self.rx_packets = self.tx_bytes = 0

    from collections import Counter
    m1, m2 = Member(("192.0.2.1", 1), bytes((100, 64, 0, 1))), Member(("192.0.2.2", 2), bytes((100, 64, 0, 2)))
    relay.by_endpoint = {m1.endpoint: m1, m2.endpoint: m2}
    relay.by_addr = {bytes((100, 64, 0, 1)): m1, bytes((100, 64, 0, 2)): m2}
    relay.drops = Counter()
    datagrams = [bytes((wire.RELAYED, 0, 0, 0, 100, 64, 0, 2, 0, 0, 0, 0)) + m for m in sealed]
    receive = relay.receive

    def forward():
        sent.clear()
        for d in datagrams:
            receive(d, m1.endpoint, 0.0)
    return [("forward", forward, len(datagrams), ITERATIONS)], \
        lambda: len(sent) == len(datagrams) and not relay.drops


STAGES = (("send", (("tun read", "tun_read"), ("split", "split"), ("clamp", "clamp"), ("seal", "seal"),
                    ("rest of from_tun", "from_tun_rest"), ("send", "send"))),
          ("receive", (("receive", "receive"), ("open", "open"), ("rest of receive", "receive_rest"),
                       ("merge", "merge"), ("tun write", "tun_write"))),
          ("relay", (("forward", "forward"),)))


def express_train() -> dict:
    """The express path (net/_express.c) on a whole super-packet, µs per segment: the read
    callback on tunneld0 (cut, seal, one train out) and the one on the socket (one GRO read,
    open, merged back for tunneld0), each TUN device one end of a datagram socketpair
    (tests/lab/express_cases.py's pair). Empty where the revision has no express path."""
    try:
        from tests.lab.express_cases import pair
        from tunneld.engine.offload import GSO_TCPV4, NEEDS_CSUM, _VNET
        a, b = pair()
    except (ImportError, SystemExit, TypeError):
        return {}
    b.sock.setsockopt(17, 104, 1)  # UDP_GRO, as the daemon's socket
    size = MTU - 52
    buf = _VNET.pack(NEEDS_CSUM, GSO_TCPV4, 52, size, 20, 16) + tcp_super(a.address, b.address, SEGMENTS, size)
    written = []

    def send():
        a.app.send(buf)
        a.on_tun()

    def receive():
        b.on_udp()
        written.extend(b.written())
    out = in_turn(send, receive)
    ok = bool(written) and all(len(w) > 10 * size for w in written) and not a.handed_tun and not b.handed_udp
    return {"express_send": out[0], "express_receive": out[1], "express_ok": ok}


LONE = 300  # lone packets per measurement
PAUSE = 0.02  # the bench's ping interval: a hop that slept that long, its caches gone cold


def lone() -> dict:
    """A lone 84-byte packet through both hops of a direct pair, one at a time: tunneld0 to
    the socket (the reader callback on tunneld0) and the socket to tunneld0, on a real TUN
    device and real UDP sockets, two node engines after a real handshake. Back to back
    ("warm") and each after a PAUSE ("cold"); the median hop in µs, on the Python path and,
    where the revision has it, the express path (net/_express.c)."""
    import statistics
    from collections import Counter

    from tests.sim.simnet import public_pair
    from tunneld.host.tun import Tun
    from tunneld.net.dataplane import DataPlane

    _, a, b = public_pair()
    tun = Tun.open("tdl0", persist=False, offload="tcp")
    out: dict = {}
    try:
        for cmd in (("addr", "add", f"{a.assignment.address}/32", "dev", "tdl0"),
                    ("link", "set", "tdl0", "mtu", str(MTU), "up"),
                    ("route", "add", f"{b.assignment.address}/32", "dev", "tdl0")):
            subprocess.run(["ip", *cmd], check=True, capture_output=True)
        os.set_blocking(tun.fd, False)
        socks = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            socks.append(s)
        ua, ub, app = socks
        app.close()
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        app.bind((a.assignment.address, 0))
        (pa_peer,), (pb_peer,) = a.peers.values(), b.peers.values()
        pa_peer.tx_ep, pb_peer.tx_ep = ub.getsockname(), ua.getsockname()
        a.table.version += 1
        b.table.version += 1
        dst = (b.assignment.address, 9)
        for kind in ("python", "express"):
            pa = DataPlane(tun.fd, False, ua, 1500, Counter(), lambda: None)
            pb = DataPlane(tun.fd, False, ub, 1500, Counter(), lambda: None)

            class Out:
                def __init__(self, plane):
                    self.plane = plane

                def send(self, ep, data):
                    self.plane.send(ep, data)

                def write_tun(self, packet):
                    self.plane.write_tun(packet)
            a.out, b.out = Out(pa), Out(pb)
            on_tun = lambda: pa.on_tun(a.from_tun_train)  # noqa: E731
            on_udp = lambda: pb.on_udp(b.receive, None)  # noqa: E731
            if kind == "express":
                if not hasattr(pa, "use_express"):
                    break
                from tunneld.net.express import NodeSource
                got_a = pa.use_express(NodeSource(a, lambda: 1, lambda: None, lambda: None, lambda: None),
                                       lambda first, now: pa.on_tun(a.from_tun_train, first, now), None)
                got_b = pb.use_express(NodeSource(b, lambda: 1, lambda: None, lambda: None, lambda: None),
                                       None, lambda first, now: pb.on_udp(b.receive, None, first, now))
                if got_a is None or got_b is None:
                    break
                on_tun, on_udp = got_a[0], got_b[1]
            for _ in range(1000):  # what the device said coming up (IPv6 solicitations), gone
                try:
                    os.read(tun.fd, 65600)
                except BlockingIOError:
                    break
            for pause, label in ((0.0, "warm"), (PAUSE, "cold")):
                send, receive = [], []
                for _ in range(LONE):
                    app.sendto(b"x" * 56, dst)
                    time.sleep(pause or 0.0001)  # the kernel's path to tunneld0 first
                    t0 = time.perf_counter()
                    on_tun()
                    t1 = time.perf_counter()
                    on_udp()
                    t2 = time.perf_counter()
                    send.append(t1 - t0)
                    receive.append(t2 - t1)
                out[f"lone_{kind}_send_{label}"] = statistics.median(send) * 1e6
                out[f"lone_{kind}_receive_{label}"] = statistics.median(receive) * 1e6
    finally:
        tun.close()
    return out


def table(r: dict) -> str:
    r = dict(r)  # what the engines add around clamp, seal and open: lookups, checks, counters
    r["from_tun_rest"] = max(0.0, r.get("engine_send", 0.0) - r["clamp"] - r["seal"])
    r["receive_rest"] = max(0.0, r.get("engine_receive", 0.0) - r["open"])
    lines = [f"per-packet budget, µs per {r['mtu']}-byte packet ({r['segments']} per super-packet / train; "
             f"best of {ROUNDS} rounds x {TURNS} runs)", ""]
    for side, stages in STAGES:
        total = sum(r[k] for _, k in stages)
        cells = "  ".join(f"{name} {r[k]:.2f}" for name, k in stages)
        lines.append(f"{side:8} {cells}  = {total:.2f} µs  ({1 / total:.2f} Mpps, "
                     f"{r['mtu'] * 8 / total / 1000:.2f} Gbit/s on one core)")
    if "express_send" in r:
        lines.append(f"express  the same super-packet in C (net/_express.c): cut, seal, send {r['express_send']:.2f}; "
                     f"receive, open, merge, tun write {r['express_receive']:.2f} µs per packet")
    for kind in ("python", "express"):
        if f"lone_{kind}_send_warm" in r:
            lines.append(f"lone {kind:7} µs per hop (median of {LONE}), tunneld0 -> socket "
                         f"{r[f'lone_{kind}_send_warm']:.1f}, socket -> tunneld0 {r[f'lone_{kind}_receive_warm']:.1f}; "
                         f"after {PAUSE * 1000:.0f} ms idle: {r[f'lone_{kind}_send_cold']:.1f} and "
                         f"{r[f'lone_{kind}_receive_cold']:.1f}")
    checks = {k: r.get(k) for k in ("tun_super_ok", "merge_ok", "udp_gso", "udp_gro", "forward_ok", "engine_ok",
                                    "express_ok") if k in r}
    lines.append(f"checks   {checks}")
    return "\n".join(lines)


def measure(python: str = sys.executable, installed: bool = False) -> dict:
    """One run of inner() in a namespace of its own, by `python`."""
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        cmd = [python, *(("-I",) if installed else ()), os.path.abspath(__file__), "--inner",
               *(("--installed",) if installed else ())]
        proc = subprocess.run(["ip", "netns", "exec", NS, *cmd], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"the budget's inner run failed:\n{proc.stderr}")
        return json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--inner"]:
        print(json.dumps(inner()))
        return 0
    if os.geteuid() != 0:
        print("bench/budget.py: run as root (it makes a network namespace and a TUN device)", file=sys.stderr)
        return 2
    compare = argv[argv.index("--compare") + 1] if "--compare" in argv else None
    runs = {"this tree": None}
    if compare:
        from tests.lab.release import release_python
        runs = {f"tunneld {compare}": release_python(compare), "this tree": None}
    results: dict = {}
    for _ in range(TURNS):  # the revisions take turns, and each stage keeps its best: noise that
        for label, python in runs.items():  # lasts a while falls on both alike
            got = measure(python or sys.executable, installed=python is not None)
            best = results.setdefault(label, got)
            for key, value in got.items():
                if isinstance(value, float):
                    best[key] = min(best[key], value)
                elif isinstance(value, bool):
                    best[key] = best[key] and value
    for label, r in results.items():
        print(f"{label}:\n{table(r)}\n")
    if "--json" in argv:
        with open(argv[argv.index("--json") + 1], "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
