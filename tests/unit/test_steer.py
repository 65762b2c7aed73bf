"""The reuseport steering program, run by the kernel on real sockets of one port."""

import socket
import time

from tunneld.net.steer import attach, program
from tunneld.proto import wire


def reuseport_group(n):
    """n sockets on one loopback port, bound in order (the order steering indexes)."""
    group = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    port = 0
    for s in group:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        s.setblocking(False)
    return group, port


def test_relayed_datagrams_go_by_source_port_and_everything_else_to_the_first_socket():
    group, port = reuseport_group(3)
    senders = []
    try:
        assert attach(group[0], 3)
        for p in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            senders.append(c)
            c.bind(("127.0.0.1", 0))
            while c.getsockname()[1] % 3 != p:  # a port of each remainder
                c.close()
                c = senders[-1] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                c.bind(("127.0.0.1", 0))
            c.sendto(bytes((wire.RELAYED,)) + bytes(15), ("127.0.0.1", port))
            c.sendto(bytes((wire.DATA,)) + bytes(15), ("127.0.0.1", port))
        time.sleep(0.05)
        got = {i: [] for i in range(3)}
        for i, s in enumerate(group):
            while True:
                try:
                    data, addr = s.recvfrom(64)
                except BlockingIOError:
                    break
                got[i].append((data[0], addr[1] % 3))
        assert sorted(got[0]) == sorted([(wire.DATA, 0), (wire.DATA, 1), (wire.DATA, 2), (wire.RELAYED, 0)])
        assert got[1] == [(wire.RELAYED, 1)] and got[2] == [(wire.RELAYED, 2)]
    finally:
        for s in group + senders:
            s.close()


def test_the_program_is_six_instructions_ending_in_a_return():
    insns = program(4)
    assert len(insns) == 6 and insns[-1][0] == 0x16 and insns[4] == (0x94, 0, 0, 4)


def test_a_nodes_data_goes_by_lane_and_everything_else_to_the_first_socket():
    """Direct DATA by the counter's top byte (offset 8), RELAYED DATA by the inner one's (16),
    lane mod N; handshakes, relayed handshakes and runts to the node's own socket."""
    group, port = reuseport_group(3)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert attach(group[0], 3, node=True)

        def data(lane):
            return bytes((wire.DATA, 0, 0, 0)) + b"idx!" + bytes((lane,)) + bytes(7) + bytes(16)

        sent = {b"direct lane %d" % lane: (data(lane), lane % 3) for lane in (0, 1, 2, 3, 4, 255)}
        sent.update({b"relayed lane %d" % lane: (bytes((wire.RELAYED, 0, 0, 0)) + b"\x64\x40\x00\x02" + data(lane),
                                                   lane % 3) for lane in (0, 1, 2, 5)})
        sent[b"init"] = (bytes((wire.INIT,)) + bytes(30), 0)
        sent[b"relayed init"] = (bytes((wire.RELAYED, 0, 0, 0, 1, 2, 3, 4, wire.INIT)) + bytes(30), 0)
        sent[b"runt"] = (bytes((wire.DATA, 0, 0)), 0)
        sent[b"rr"] = (bytes((wire.RELAYED, 0, 0, 0, 1, 2, 3, 4, wire.DATA)), 0)  # a relayed runt: 11 bytes
        for tag, (msg, _) in sent.items():
            sender.sendto(msg + tag, ("127.0.0.1", port))
        time.sleep(0.05)
        got = {}
        for i, s in enumerate(group):
            while True:
                try:
                    msg = s.recv(256)
                except BlockingIOError:
                    break
                tag = next(t for t, (m, _) in sent.items() if msg == m + t)
                got[tag] = i
        assert got == {tag: want for tag, (_, want) in sent.items()}
    finally:
        for s in group + [sender]:
            s.close()
