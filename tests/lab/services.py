"""Services for publishing tests (tests/integration/test_publish.py, test_relays.py): a TCP
service that sends a seeded stream, a UDP echo, and the outside client's side of each."""

import hashlib

MB20 = 20 * 1024 * 1024

# A TCP service: each connection gets argv[3] bytes of a seeded stream, then the end. Port+1
# answers with what it was told first: the PROXY v2 header's client address, or "none".
SERVICE = r"""
import hashlib, socket, sys, threading
from tunneld.proto import proxy
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def blob():
    sent, block = 0, 0
    while sent < n:
        chunk = hashlib.sha256(b"seed" + block.to_bytes(8, "big")).digest() * 2048
        chunk = chunk[: n - sent]; sent += len(chunk); block += 1
        yield chunk
def serve(conn):
    with conn:
        for chunk in blob():
            conn.sendall(chunk)
def who(conn):
    with conn:
        conn.settimeout(5)
        head = b""
        while len(head) < 28:
            b = conn.recv(28 - len(head))
            if not b: break
            head += b
        got = proxy.parse(head)
        conn.sendall(("%s:%d" % got[0] if got else "none").encode())
def listen(p, handler):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, p)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c,), daemon=True).start()
threading.Thread(target=listen, args=(port + 1, who), daemon=True).start()
print("up", flush=True)
listen(port, serve)
"""

# A UDP echo service: each datagram back, prefixed.
ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(b"echo:" + data, peer)
"""

# The outside client: fetch everything from host:port, print length and sha256.
FETCH = r"""
import hashlib, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
h = hashlib.sha256(); n = 0
while True:
    b = s.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""

UDP_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
got = 0
for i in range(int(sys.argv[3])):
    msg = b"hello %d" % i
    for _ in range(3):  # UDP: a datagram may be lost; ask again, at most thrice
        s.sendto(msg, (sys.argv[1], int(sys.argv[2])))
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        if data == b"echo:" + msg:
            got += 1
            break
print(got)
"""


def expected(n: int) -> str:
    h, sent, block = hashlib.sha256(), 0, 0
    while sent < n:
        chunk = (hashlib.sha256(b"seed" + block.to_bytes(8, "big")).digest() * 2048)[: n - sent]
        h.update(chunk)
        sent += len(chunk)
        block += 1
    return f"{n} {h.hexdigest()}"
