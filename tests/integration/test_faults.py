"""Faults and attacks in the namespace lab: a relay killed mid-stream, a lossy relay link,
handshake floods, replayed and spoofed packets, strangers, a thousand reconnects, a relay
killed while registering. Every test is bounded in time and cleans up through its lab."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tunneld.engine.relay import UNDER_LOAD_INITS
from tests.lab import wait_for
from tests.lab.overlay import Overlay, standard, transfer

RELAYED = ("natted", "hidden")  # two NATs that each let in only what they sent to: the relay carries it


def peer_path(ov, src, dst):
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


def relayed_pair(ov):
    src, dst = RELAYED
    ov.ping(src, ov.address(dst), count=2)
    assert peer_path(ov, src, dst) == "relay" and peer_path(ov, dst, src) == "relay"
    return src, dst


def in_background(fn, *args, **kw):
    """Run fn in a thread; the returned callable joins it and gives its result or raises its error."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args, **kw)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result(timeout):
        t.join(timeout)
        if t.is_alive():
            raise AssertionError(f"{fn.__name__} did not finish in {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]
    return result


def ping_stats(proc) -> tuple[int, int]:
    m = re.search(rb"(\d+) packets transmitted, (\d+) received", proc.stdout)
    assert m, proc.stdout
    return int(m.group(1)), int(m.group(2))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_relayed_stream_survives_kill_9_of_the_relay_and_its_restart(lab):
    ov = standard(lab)
    src, dst = relayed_pair(ov)
    size = 40 << 20
    # Paced to about 8 s, so that the relay dies and returns while the stream is under way.
    done = in_background(transfer, ov, src, dst, 7101, size, timeout=150, rate=5 << 20)
    time.sleep(2)
    ov.stop_relay(signal.SIGKILL)
    time.sleep(3)
    ov.start_relay()
    sent, received = done(170)
    assert sent == received and sent.startswith(f"{size} ")
    states = ov.wait_connected(timeout=30)
    # The nodes came back by themselves, and the pair still goes through the relay.
    assert all(st["relay"]["connected"] for st in states.values())
    assert peer_path(ov, src, dst) == "relay"


def test_a_relayed_stream_survives_5_percent_loss_both_ways_on_the_relays_link(lab):
    ov = standard(lab)
    src, dst = relayed_pair(ov)
    rules = [["INPUT", "-p", "udp", "--dport", "7000"], ["OUTPUT", "-p", "udp", "--sport", "7000"]]
    loss = ["-m", "statistic", "--mode", "random", "--probability", "0.05", "-j", "DROP"]
    for rule in rules:  # the lab's namespace goes with the lab, rules and all
        lab.nsexec(ov.relay.ns, "iptables", "-w", "5", "-I", *rule, *loss)
    # The issue asks for 5 MB; 16 MB gives the loss enough packets to be sure it bit both ways.
    started = time.monotonic()
    sent, received = transfer(ov, src, dst, 7102, 16 << 20, timeout=150)
    took = time.monotonic() - started
    assert sent == received and sent.startswith(f"{16 << 20} ")
    out = lab.nsexec(ov.relay.ns, "iptables", "-w", "5", "-L", "-v", "-n", "-x").stdout.decode()
    dropped = [(int(line.split()[0]), int(line.split()[1])) for line in out.splitlines() if "statistic" in line]
    print(f"5% loss: 16 MB byte-exact in {took:.1f} s; dropped (packets, bytes) in, out: {dropped}")
    # Both directions did lose. The kernel counts a GRO or GSO train of datagrams as one packet
    # and drops it whole: 5% of the datagrams on average, in bursts, harsher than single losses.
    assert len(dropped) == 2 and all(n >= 3 for n, _ in dropped), out


FLOOD = r"""
import socket, sys, time
from tunneld.proto import messages, wire
from tunneld.proto.handshake import Identity, Initiation, tai64n
relay_key, host, port, rate, seconds = bytes.fromhex(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \
    float(sys.argv[4]), float(sys.argv[5])
inits = []
for i in range(1000):  # well-formed initiations from 1000 keys the relay never saw
    payload = messages.encode({"ts": tai64n(time.time_ns()), "name": f"flood{i}", "token": None, "mtu": 1500,
                               "routes": [], "lan": []})
    inits.append(Initiation(Identity.generate(), relay_key, wire.SUITE_AESGCM, i.to_bytes(4, "big"),
                            payload, 0.0).message)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
start = time.monotonic(); sent = 0
while (elapsed := time.monotonic() - start) < seconds:
    if sent >= rate * elapsed:
        time.sleep(0.001)
        continue
    u.sendto(inits[sent % len(inits)], (host, port)); sent += 1
print(sent, flush=True)
"""


def test_a_handshake_flood_gets_cookies_and_does_not_starve_the_nodes(lab):
    ov = standard(lab)
    src, dst = relayed_pair(ov)
    relay_key = ov.status(ov.relay)["public_key"]
    before = ov.status(ov.relay)
    stranger = lab.public_host("flooder")
    flood = subprocess.Popen(["ip", "netns", "exec", stranger.ns, sys.executable, "-c", FLOOD, relay_key,
                              ov.relay.address, "7000", "5000", "8"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    lab.processes.append(flood)
    assert flood.stdout.readline().strip() == b"ready", flood.stderr.read()
    time.sleep(1)  # the flood is on
    pings = in_background(ov.ping, src, ov.address(dst), count=100, timeout=40)
    # A node that restarts during the flood joins again: it is asked for a cookie, and answers it.
    assert ov.stop_node("public") == 0
    rejoin = time.monotonic()
    ov.join(ov.nodes["public"], "public")
    ov.wait_connected(["public"], timeout=20)
    rejoined_in = time.monotonic() - rejoin
    public = ov.node_status("public")
    out, err = flood.communicate(timeout=30)
    sent = int(out.split()[-1])
    transmitted, received = ping_stats(pings(60))
    after = ov.status(ov.relay)
    assert ov.relay_proc.poll() is None
    processed = after["counters"]["initiations_processed"] - before["counters"].get("initiations_processed", 0)
    asked = after["drops"].get("handshake_needs_cookie", 0)
    print(f"flood: {sent} INITs; relay did {processed} handshakes, sent {asked} cookies; pings "
          f"{received}/{transmitted}; public rejoined in {rejoined_in:.1f} s")
    assert sent >= 20000, err
    # The nodes never noticed...
    assert received >= 0.95 * transmitted, (transmitted, received)
    assert rejoined_in < 10 and public["counters"].get("cookies", 0) >= 1, (rejoined_in, public["counters"])
    # ...because the relay did the public-key work of a few hundred initiations, not of tens of thousands:
    # one second's worth (UNDER_LOAD_INITS) before it is under load, one more if the flooder stalls for
    # over a second on this shared machine and the meter starts afresh (seen once in CI: 390), and the
    # rejoin's own.
    assert processed <= 2 * UNDER_LOAD_INITS + 100, (processed, sent)
    assert asked >= 0.8 * (sent - processed), (asked, sent)
    assert after["counters"]["cookie_replies"] == asked
    assert after["drops"].get("internal_error", 0) == 0


def test_a_node_flooded_on_its_public_port_keeps_its_peers(lab):
    """The same flood, at a node with a public address, by someone who learnt its key."""
    from tunneld.engine.peers import PEER_UNDER_LOAD_INITS
    ov = standard(lab)
    target = ov.node_status("public")
    endpoint = next(n["endpoint"] for n in ov.status(ov.relay)["nodes"] if n["name"] == "public")
    host, port = endpoint.rsplit(":", 1)
    for other in ("natted", "hidden"):
        ov.ping(other, target["address"], count=2)
    stranger = lab.public_host("flooder")
    flood = subprocess.Popen(["ip", "netns", "exec", stranger.ns, sys.executable, "-c", FLOOD, target["public_key"],
                              host, port, "3000", "6"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.processes.append(flood)
    assert flood.stdout.readline().strip() == b"ready", flood.stderr.read()
    time.sleep(1)
    pings = {n: in_background(ov.ping, n, target["address"], count=40, timeout=40) for n in ("natted", "hidden")}
    out, err = flood.communicate(timeout=30)
    sent = int(out.split()[-1])
    results = {n: ping_stats(p(60)) for n, p in pings.items()}
    after = ov.node_status("public")
    processed = after["counters"].get("peer_initiations_processed", 0) - \
        target["counters"].get("peer_initiations_processed", 0)
    asked = after["drops"].get("handshake_needs_cookie", 0)
    print(f"node flood: {sent} INITs; node did {processed} handshakes, sent {asked} cookies; pings {results}")
    assert ov.node_procs["public"].poll() is None and sent >= 10000, err
    assert all(rx >= 0.95 * tx for tx, rx in results.values()), results
    # One second's worth before the node is under load (PEER_UNDER_LOAD_INITS), and one more
    # if the flooder stalls for over a second on this shared machine and the meter starts
    # afresh (seen once in CI: 84). Without the guard it is every one of the 10,000+.
    assert processed <= 2 * PEER_UNDER_LOAD_INITS + 20, processed
    assert asked >= 0.8 * (sent - processed), (asked, sent)


SNIFF_AND_REPLAY = r"""
import socket, struct, sys, time
dst_ip, dst_port, want, times = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL: outgoing too
sniff.settimeout(20)
captured = []
deadline = time.monotonic() + 20
while len(captured) < want and time.monotonic() < deadline:
    frame, addr = sniff.recvfrom(65535)
    if addr[2] != socket.PACKET_OUTGOING:
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    if frame[12:14] != b"\x08\x00" or ip[9] != 17 or socket.inet_ntoa(ip[16:20]) != dst_ip:
        continue
    sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
    payload = ip[ihl + 8:struct.unpack("!H", ip[2:4])[0]]
    # relayed (type 4) DATA (type 3) of a ping with a 300-byte payload
    if sport == 7000 and dport == dst_port and payload[:1] == b"\x04" and payload[8:9] == b"\x03" \
            and len(payload) > 300:
        captured.append(payload)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
for _ in range(times):
    for p in captured:  # sent again from the relay's own address and port
        raw.sendto(struct.pack("!HHHH", 7000, dst_port, 8 + len(p), 0) + p, (dst_ip, 0))
print(len(captured), flush=True)
"""


def test_a_captured_data_packet_replayed_is_dropped(overlay):
    ov = overlay
    src, dst = relayed_pair(ov)
    endpoint = next(n["endpoint"] for n in ov.status(ov.relay)["nodes"] if n["name"] == dst)
    host, port = endpoint.rsplit(":", 1)
    before = ov.node_status(dst)["drops"].get("replay", 0)
    replay = subprocess.Popen(["ip", "netns", "exec", ov.relay.ns, sys.executable, "-c", SNIFF_AND_REPLAY,
                               host, port, "5", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ov.lab.processes.append(replay)
    time.sleep(0.5)
    ov.ping(src, ov.address(dst), count=10, size=300)
    out, err = replay.communicate(timeout=40)
    assert out.strip() == b"5", err
    # Every one of the 15 copies reached the node and was dropped by its replay window.
    wait_for(lambda: ov.node_status(dst)["drops"].get("replay", 0) - before == 15, 10,
             what="15 replays to be dropped")
    assert ov.ping(src, ov.address(dst), count=2).returncode == 0


def test_a_node_cannot_send_as_another_nodes_address(overlay):
    ov = overlay
    src, dst = relayed_pair(ov)
    victim = ov.address("public")
    ns = ov.nodes[src].ns
    before = ov.node_status(dst)["drops"].get("spoofed_source", 0)
    ov.lab.nsexec(ns, "ip", "addr", "add", f"{victim}/32", "dev", "tunneld0")
    try:
        r = ov.lab.nsexec(ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", victim,
                          ov.address(dst), check=False)
    finally:
        ov.lab.nsexec(ns, "ip", "addr", "del", f"{victim}/32", "dev", "tunneld0")
    assert r.returncode != 0  # not one answer
    assert ov.node_status(dst)["drops"].get("spoofed_source", 0) - before >= 3
    assert ov.ping(src, ov.address(dst), count=2).returncode == 0


STRANGER_INIT = r"""
import socket, sys, time
from tunneld.proto import wire
from tunneld.proto.handshake import Identity, Initiation, tai64n
msg = Initiation(Identity.generate(), bytes.fromhex(sys.argv[1]), wire.SUITE_AESGCM, b"\x00\x00\x00\x07",
                 tai64n(time.time_ns()), 0.0).message
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
for _ in range(3):
    u.sendto(msg, (sys.argv[2], int(sys.argv[3])))
try:
    print("answered", len(u.recv(2048)))
except socket.timeout:
    print("nothing")
"""


def test_an_unknown_key_gets_nothing_from_a_node(overlay):
    ov = overlay
    target = ov.node_status("public")
    endpoint = next(n["endpoint"] for n in ov.status(ov.relay)["nodes"] if n["name"] == "public")
    host, port = endpoint.rsplit(":", 1)
    before = target["drops"].get("handshake_unknown_key", 0)
    stranger = ov.lab.public_host("stranger2")
    out = ov.lab.nsexec(stranger.ns, sys.executable, "-c", STRANGER_INIT, target["public_key"], host, port)
    assert out.stdout.decode().strip() == "nothing"
    assert ov.node_status("public")["drops"].get("handshake_unknown_key", 0) - before == 3


# A relay link driven by hand (engine/relaylink.py, the node's join without its peers): what
# it sends waits in `out` for the script's own socket.
LINK = r"""
import select, socket, sys, time
from tunneld.engine.relaylink import JOINED, REFUSED, JoinRequest, RelayLink
from tunneld.net.base import real_env
from tunneld.proto.framing import Deframer, frame
from tunneld.proto.handshake import Identity
from tunneld.proto.noise import KeyPair
from tunneld.proto.token import JoinToken


class Out:  # the link's Transmit
    def __init__(self): self.out = []
    def send(self, ep, data): self.out.append(data)
    def write_tun(self, packet): pass
    def relay_transport(self, tcp): pass
    def relay_endpoint(self, address): pass
"""

CYCLES = LINK + r"""
relay = (sys.argv[1], int(sys.argv[2])); token = JoinToken.parse(sys.argv[3]); cycles = int(sys.argv[4])
# one node, connecting and leaving again and again
identity = Identity(KeyPair.from_private_bytes(bytes.fromhex(sys.argv[5])))


def cycle(i, tcp):
    out = Out()
    link = RelayLink(identity, token.relay_public, JoinRequest("cycler", token.credential), out, real_env(),
                     time.monotonic())
    if tcp:
        s = socket.create_connection(relay, timeout=5); deframer = Deframer()
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(relay)
    s.setblocking(False)

    def flush():
        for data in out.out:
            s.send(frame(data) if tcp else data)
        out.out.clear()

    deadline = time.monotonic() + 20
    while not (link.up and link.rtt is not None):  # joined, and its ping answered
        if time.monotonic() > deadline:
            raise SystemExit(f"cycle {i} ({'tcp' if tcp else 'udp'}) failed: {dict(link.drops)}")
        link.tick(time.monotonic()); flush()
        if select.select([s], [], [], 0.02)[0]:
            data = s.recv(65536)
            for msg in (deframer.feed(data) if tcp else [data]):
                event = link.receive(msg, time.monotonic())
                if event is not None and event[0] == REFUSED:
                    raise SystemExit(f"cycle {i} refused: {event[1]}")
            flush()
    link.bye(); flush(); s.close()


for i in range(cycles):
    cycle(i, tcp=i % 2 == 1)
print("done", cycles, flush=True)
"""


def test_a_thousand_reconnects_leave_the_relay_as_it_was(lab):
    ov = Overlay(lab)
    ov.start_relay()
    token = ov.token("--ttl", "1h")
    client = lab.public_host("cycler")
    pid = ov.relay_proc.pid
    key = os.urandom(32).hex()

    def cycles(n):
        out = lab.nsexec(client.ns, sys.executable, "-c", CYCLES, ov.relay.address, "7000", token, str(n), key,
                         timeout=600)
        assert out.stdout.decode().split() == ["done", str(n)], out.stderr
        wait_for(lambda: ov.status(ov.relay)["tcp_streams"] == 0, 20, what="the relay to close the streams")
        st = ov.status(ov.relay)
        return {"fds": fds(pid), "tasks": st["tasks"], "sessions": st["sessions"], "rss": rss_kb(pid),
                "nodes": len(st["nodes"])}

    warm = cycles(100)  # caches, pools and the first allocations settle
    started = time.monotonic()
    after = cycles(1000)
    print(f"1000 cycles in {time.monotonic() - started:.1f} s; relay before {warm}, after {after}")
    assert after["fds"] == warm["fds"], (warm, after)
    assert after["tasks"] == warm["tasks"], (warm, after)
    assert after["nodes"] == warm["nodes"] == 1
    assert after["sessions"] <= 3, after  # current, previous, pending: never one per connect
    assert after["rss"] - warm["rss"] < 8 * 1024, (warm, after)
    assert ov.status(ov.relay)["drops"].get("internal_error", 0) == 0


REGISTER = LINK + r"""
relay = (sys.argv[1], int(sys.argv[2])); token = JoinToken.parse(sys.argv[3])
for i in range(int(sys.argv[4])):  # new nodes, one after another, each with a key of its own
    out = Out()
    link = RelayLink(Identity.generate(), token.relay_public, JoinRequest(f"reg{i:04d}", token.credential), out,
                     real_env(), time.monotonic())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(relay); s.settimeout(0.05)
    deadline = time.monotonic() + 3
    reply = None
    while reply is None:
        if time.monotonic() > deadline:
            raise SystemExit(0)  # the relay is gone: what was printed is what was confirmed
        link.tick(time.monotonic())
        for data in out.out:
            s.send(data)
        out.out.clear()
        try:
            event = link.receive(s.recv(65536), time.monotonic())
        except (socket.timeout, ConnectionRefusedError):
            continue
        if event is not None and event[0] == REFUSED:
            raise SystemExit(str(event[1]))
        if event is not None and event[0] == JOINED:
            reply = event[1]
    print(reply["name"], reply["address"], flush=True)  # the relay answered: it is registered
    s.close()
"""


def test_a_relay_killed_while_registering_loses_no_completed_registration(lab):
    ov = Overlay(lab)
    ov.start_relay()
    token = ov.token("--ttl", "1h")
    client = lab.public_host("registrar")
    proc = subprocess.Popen(["ip", "netns", "exec", client.ns, sys.executable, "-c", REGISTER, ov.relay.address,
                             "7000", token, "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.processes.append(proc)
    confirmed = []
    while len(confirmed) < 40:  # let it get going, then pull the plug mid-registration
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        confirmed.append(line.decode().split())
    ov.stop_relay(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    confirmed += [line.split() for line in out.decode().splitlines()]
    assert proc.returncode == 0, err
    assert 40 <= len(confirmed) < 2000
    print(f"{len(confirmed)} registrations confirmed before the kill")
    ov.start_relay()
    registered = {n["name"]: n["address"] for n in ov.status(ov.relay)["nodes"]}
    missing = [(name, addr) for name, addr in confirmed if registered.get(name) != addr]
    assert not missing, missing
    integrity = lab.nsexec(ov.relay.ns, sys.executable, "-c",
                           "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("
                           "'pragma integrity_check').fetchone()[0])",
                           os.path.join(ov.relay.state_dir, "relay.db"))
    assert integrity.stdout.decode().strip() == "ok"


@pytest.mark.parametrize("damage", ["database", "key", "database-is-a-directory"])
def test_a_damaged_state_dir_is_reported_in_one_line_and_left_alone(lab, damage):
    ov = Overlay(lab)
    ov.start_relay()
    ov.token()
    ov.stop_relay()
    state = ov.relay.state_dir
    db, key = os.path.join(state, "relay.db"), os.path.join(state, "private.key")
    for leftover in ("relay.db-wal", "relay.db-shm"):
        assert not os.path.exists(os.path.join(state, leftover))  # a clean stop checkpoints
    if damage == "database":
        with open(db, "r+b") as f:
            f.seek(0)
            f.write(os.urandom(4096))
    elif damage == "key":
        with open(key, "w") as f:
            f.write("not a key\n")
    else:
        os.unlink(db)
        os.mkdir(db)
    snapshot = {name: open(os.path.join(state, name), "rb").read() for name in os.listdir(state)
                if os.path.isfile(os.path.join(state, name))}
    proc = lab.nsexec(ov.relay.ns, sys.executable, "-m", "tunneld", "serve", "--listen", ov.relay_endpoint,
                      "--state-dir", state, check=False)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr.decode(), err
    assert (damage.split("-")[0] if damage != "key" else "key") in err[0] and state in err[0], err
    after = {name: open(os.path.join(state, name), "rb").read() for name in os.listdir(state)
             if os.path.isfile(os.path.join(state, name))}
    assert after == snapshot  # nothing overwritten, nothing added


def test_a_listen_address_that_is_not_ours_changes_nothing(lab):
    host = lab.public_host("relay2")
    state = os.path.join(lab.tmp, "never")
    proc = lab.nsexec(host.ns, sys.executable, "-m", "tunneld", "serve", "--listen", "192.0.2.250:7000",
                      "--state-dir", state, check=False)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "--listen" in err[0], err
    assert not os.path.exists(state)


def test_keys_rotate_on_time_under_traffic_without_a_pause(overlay):
    """130 s of pings every 0.1 s through the relay: longer than REKEY_AFTER_TIME (120 s), so
    both the peers' session and each node's session with the relay rotate under the traffic.
    Beside them, paced TCP streams both ways, over whichever of the nodes' workers (lanes)
    the kernel gives their flows: each arrives byte-exact across the rotation."""
    ov = overlay
    src, dst = relayed_pair(ov)
    before = {n: ov.node_status(n)["counters"] for n in (src, dst)}
    streams = [in_background(transfer, ov, a, b, 7900 + i, 125 * 40_000, 180, rate=40_000)
               for i, (a, b) in enumerate([(src, dst), (dst, src), (src, dst), (dst, src)])]
    r = ov.lab.nsexec(ov.nodes[src].ns, "ping", "-n", "-q", "-c", "1300", "-i", "0.1", "-W", "2",
                      ov.address(dst), check=False, timeout=200)
    for result in streams:
        sent, received = result(60)
        assert sent == received
    after = {n: ov.node_status(n)["counters"] for n in (src, dst)}
    transmitted, received = ping_stats(r)
    grew = {n: {k: after[n].get(k, 0) - before[n].get(k, 0) for k in ("peer_handshakes_sent",
                                                                     "relay_handshakes_sent")} for n in after}
    assert sum(g["peer_handshakes_sent"] for g in grew.values()) >= 1, grew  # the pair's keys changed
    assert all(g["relay_handshakes_sent"] >= 1 for g in grew.values()), grew  # and each node's with the relay
    print(f"rotation: {received}/{transmitted} pings, handshakes {grew}")
    # No pause: a stall of 0.3 s would have cost three pings in a row.
    drops = {n: ov.node_status(n)["drops"] for n in (src, dst)} | {"relay": ov.status(ov.relay)["drops"]}
    assert transmitted - received <= 2, (transmitted, received, drops)
