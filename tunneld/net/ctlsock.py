"""The control socket: `tunneld status` (and, on a relay, `tunneld token` and `tunneld
revoke`) ask the running daemon over a unix socket.

One JSON request line in, one JSON response line out. The socket is mode 0600
in the state dir: only the daemon's user (root) may ask. A handler may answer at
once or with a coroutine (an answer that waits for the store).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
from typing import Callable

from ..errors import ConfigError, TunneldError

_LIMIT = 65536


def _alive(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


async def serve(path: str, handler: Callable[[dict], dict]) -> asyncio.AbstractServer:
    if os.path.exists(path):
        if _alive(path):
            raise ConfigError(f"another tunneld is running with this state dir ({path} answers); "
                              "stop it or use another --state-dir")
        os.unlink(path)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            try:
                request = json.loads(line)
                response = handler(request) if isinstance(request, dict) else {"error": "not a JSON object"}
                if inspect.isawaitable(response):
                    response = await response
            except ValueError:
                response = {"error": "not JSON"}
            writer.write(json.dumps(response).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(on_client, path=path, limit=_LIMIT)
    finally:
        os.umask(old)
    return server


def running(path: str) -> bool:
    """Is a daemon answering on this control socket?"""
    return os.path.exists(path) and _alive(path)


def request(path: str, req: dict, timeout: float = 5.0) -> dict:
    """Blocking client for the CLI."""
    if not os.path.exists(path):
        raise TunneldError(f"no tunneld is running with this state dir (no {path}); "
                           "start it, or pass the --state-dir it runs with")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(json.dumps(req).encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except PermissionError:
            raise TunneldError(f"not allowed to open {path}; run as root") from None
        except OSError as exc:
            raise TunneldError(f"the tunneld at {path} does not answer ({exc.strerror or exc}); "
                               "is it still running?") from None
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise TunneldError(f"the tunneld at {path} gave an unreadable answer") from None
