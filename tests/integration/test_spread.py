"""The flow-steering program on a real multi-queue TUN device (tunneld/host/spread.py):
what the kernel hands to which queue once it is attached. A namespace of its own, a
device of three queues, packets the namespace's own stack sends into it."""

import sys

import pytest

from tests.lab import Lab

CASE = r"""
import fcntl, os, socket, struct, sys, time
from tunneld.host import spread
from tunneld.host.tun import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TUN, TUNSETIFF

def queue():
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tsp0", IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE))
    return fd

fds = [queue() for _ in range(3)]
spread.attach(fds[1])  # any queue's fd: the program is the device's
for cmd in ("ip addr add 198.18.40.1/24 dev tsp0", "ip -6 addr add 2001:db8:40::1/64 dev tsp0 nodad",
            "ip link set tsp0 mtu 1400 up"):
    os.system(cmd)
time.sleep(0.3)

def drain():
    got = []
    for i, fd in enumerate(fds):
        for _ in range(1000):
            try:
                got.append((i, os.read(fd, 4000)))
            except BlockingIOError:
                break
    return got

drain()  # what the device said coming up
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("198.18.40.1", 5000))
out = {}
for round_ in range(2):  # seven UDP flows, twice: the second time each is where it was
    for port in range(6000, 6007):
        u.sendto(b"x", ("198.18.40.2", port))
        time.sleep(0.01)
        out.setdefault(port, []).extend(i for i, _ in drain())
t = socket.socket()
t.setblocking(False)
try:
    t.connect(("198.18.40.3", 7000))  # a TCP flow: its SYN
except BlockingIOError:
    pass
time.sleep(0.05)
syn = [i for i, p in drain() if p[0] >> 4 == 4 and p[9] == 6]
u.sendto(bytes(3000), ("198.18.40.4", 6100))  # fragments of a datagram (MTU 1400): no ports
time.sleep(0.05)
frags = [i for i, p in drain() if p[0] >> 4 == 4]
v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for port in range(6200, 6206):
    v6.sendto(b"x", ("2001:db8:40::2", port))
time.sleep(0.05)
six = [i for i, p in drain() if p[0] >> 4 == 6 and p[6] == 17]
print(repr({"udp": out, "syn": syn, "frags": frags, "v6": six}))
"""


@pytest.fixture(scope="module")
def seen():
    lab = Lab()
    try:
        ns = lab.add_namespace("spread")
        out = lab.nsexec(ns, sys.executable, "-c", CASE, timeout=60)
        yield eval(out.stdout.decode())  # a dict of lists of ints, printed by CASE above
    finally:
        lab.close()


def test_new_flows_take_the_queues_in_turn_and_stay_there(seen):
    first = [seen["udp"][port][0] for port in sorted(seen["udp"])]
    assert all(b == (a + 1) % 3 for a, b in zip(first, first[1:])), first
    assert all(len(q) == 2 and q[0] == q[1] for q in seen["udp"].values()), seen["udp"]


def test_a_tcp_flow_is_a_flow_and_its_syn_takes_the_next_queue(seen):
    last = seen["udp"][max(seen["udp"])][0]
    assert seen["syn"] and set(seen["syn"]) == {(last + 1) % 3}, seen


def test_fragments_of_a_datagram_stay_together(seen):
    assert len(seen["frags"]) == 3 and len(set(seen["frags"])) == 1, seen["frags"]


def test_ipv6_flows_take_the_queues_in_turn_too(seen):
    """IPv6 inside the overlay spreads over the workers as IPv4 does (six UDP flows, by port)."""
    six = seen["v6"]  # read queue by queue: six flows in turn over three queues are two on each
    assert sorted(six) == [0, 0, 1, 1, 2, 2], six
