"""`--metrics HOST:PORT`: GET /metrics for Prometheus, on the daemon's own event loop.

Each scrape renders one status snapshot (metrics.py), in the loop's thread, so it sees
the engine between two packets and never while one is half handled. The server reads at
most a request line and headers of MAX_REQUEST bytes within TIMEOUT seconds, answers
GET and HEAD of /metrics, 404 for any other path, 405 for any other method, and closes
the connection: enough for Prometheus, and nothing a stranger can hold open.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .. import metrics
from ..errors import bind_error

log = logging.getLogger("tunneld")

IP_FREEBIND = 15
MAX_REQUEST = 8192
TIMEOUT = 5.0


async def start(where: tuple[str, int] | None, status) -> asyncio.AbstractServer | None:
    """Serve at where (None: --metrics not given, nothing); status(): the daemon's status
    dict, as its control socket answers it. A port it cannot bind ends the daemon's start
    with one line, as the tunnel's own ports do."""
    if where is None:
        return None
    host, port = where
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if method not in (b"GET", b"HEAD"):
                code, body, kind = b"405 Method Not Allowed", b"GET /metrics\n", b"text/plain"
            elif path.split(b"?", 1)[0] != b"/metrics":
                code, body, kind = b"404 Not Found", b"GET /metrics\n", b"text/plain"
            else:
                code, body, kind = b"200 OK", metrics.render(status()), metrics.CONTENT_TYPE.encode()
            writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                         + (b"" if method == b"HEAD" else body))
            await asyncio.wait_for(writer.drain(), TIMEOUT)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics: a scrape failed")
        finally:
            writer.close()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # The node's overlay address may not be on tunneld0 yet when the node starts: bind to it
    # all the same, and answer once it is there.
    sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    try:
        sock.bind((host, port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, host, port, "TCP", "--metrics") from None
    sock.setblocking(False)
    server = await asyncio.start_server(handle, sock=sock, limit=MAX_REQUEST)
    log.info("metrics at http://%s:%d/metrics", host, port)
    return server
