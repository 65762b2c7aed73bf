"""A small client of etcd's v3 API through its JSON gateway (/v3/... on every client port).

Why the gateway and not gRPC: it is etcd's own documented API on every member since 3.3,
needs nothing but HTTP (httpx), works with uvloop, and carries the few calls the relay
makes (range, txn, lease grant and keepalive, watch) as plainly as gRPC would. Keys and
values travel base64-encoded; 64-bit numbers travel as strings.

Several endpoints: a call goes to the one that answered last, and on a connection error
to the next; only when none answers is the store unavailable (EtcdUnavailable).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl

import httpx

from .base import StoreError

log = logging.getLogger("tunneld.etcd")

ELECTION_WAIT = 6.0  # seconds an operation waits out a leader election (etcd's default timeout is 1 s)
ELECTION_RETRY = 0.25
TIMEOUT = 3.0  # one call; a member that does not answer in this time is skipped


class EtcdUnavailable(StoreError):
    """No etcd endpoint answers."""


class EtcdError(StoreError):
    """etcd answered, with an error."""


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that covers every key starting with prefix."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    p[-1] += 1
    return bytes(p)


def parse_url(url: str) -> tuple[list[str], bool]:
    """etcd://H1:2379,H2:2379 (or etcds:// for TLS) -> (["H1:2379", ...], tls)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds") or not rest:
        raise ValueError("--store takes etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS)")
    hosts = [h.strip() for h in rest.rstrip("/").split(",") if h.strip()]
    for h in hosts:
        host, colon, port = h.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--store: {h[:60]!r} is not HOST:PORT")
    return hosts, scheme == "etcds"


class EtcdClient:
    def __init__(self, endpoints: list[str], *, tls: bool = False, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, timeout: float = TIMEOUT):
        tls = tls or bool(ca or cert)
        self.urls = [f"{'https' if tls else 'http'}://{e}" for e in endpoints]
        verify: ssl.SSLContext | bool = False
        if tls:
            verify = ssl.create_default_context(cafile=ca)
            if cert:
                verify.load_cert_chain(cert, key)
        self._verify, self._timeout = verify, timeout
        self._clients: dict[object, httpx.AsyncClient] = {}  # by event loop: a client serves one loop
        self._good = 0  # the endpoint that answered last

    @property
    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(timeout=self._timeout, verify=self._verify)
        return client

    async def close(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    async def call(self, path: str, body: dict) -> dict:
        """The first endpoint that answers, from the one that answered last. While members
        say they have no leader (an election: the leader was lost), try again for up to
        ELECTION_WAIT, so that an operator's command does not fail for a 2-second election."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ELECTION_WAIT
        for passes in range(1, 100):
            last, electing = "no endpoint", False
            for i in range(len(self.urls)):
                n = (self._good + i) % len(self.urls)
                try:
                    r = await self._http.post(self.urls[n] + path, json=body)
                except httpx.HTTPError as exc:
                    last = f"{self.urls[n]}: {type(exc).__name__} {exc}".strip()
                    electing = electing or isinstance(exc, httpx.TimeoutException)  # alive, without a leader?
                    continue
                out = self._answer(r)
                if out is None:  # a member that lost its cluster (no leader): try the next
                    last, electing = f"{self.urls[n]}: {r.text[:120]}", True
                    continue
                self._good = n
                return out
            if not electing or (passes > 1 and loop.time() >= deadline):
                break  # members gone, not electing; or the election outlasted what we wait
            await asyncio.sleep(ELECTION_RETRY)
        raise EtcdUnavailable(f"no etcd endpoint answers ({last})")

    @staticmethod
    def _answer(r: httpx.Response) -> dict | None:
        try:
            out = r.json()
        except ValueError:
            raise EtcdError(f"etcd answered {r.status_code} with something not JSON") from None
        if r.status_code == 200:
            return out
        message = str(out.get("error") or out.get("message") or out)[:200]
        if r.status_code >= 500 and ("leader" in message or "timed out" in message or "unavailable" in message):
            return None
        raise EtcdError(f"etcd refused the call: {message}")

    # -- key-value ------------------------------------------------------------------------

    async def range(self, key: bytes, end: bytes | None = None, revision: int = 0,
                    limit: int = 0) -> tuple[list[dict], int, bool]:
        body = {"key": b64(key)}
        if end is not None:
            body["range_end"] = b64(end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        out = await self.call("/v3/kv/range", body)
        return out.get("kvs", []), int(out["header"]["revision"]), bool(out.get("more"))

    async def get_prefix(self, prefix: bytes, page: int = 1000) -> tuple[list[dict], int]:
        """Every key under prefix, at one revision, in pages."""
        end = prefix_end(prefix)
        kvs, revision, more = await self.range(prefix, end, limit=page)
        out = list(kvs)
        while more and kvs:
            start = unb64(kvs[-1]["key"]) + b"\0"
            kvs, _, more = await self.range(start, end, revision=revision, limit=page)
            out.extend(kvs)
        return out, revision

    async def txn(self, compare: list[dict], success: list[dict], failure: list[dict] = ()) -> tuple[bool, dict]:
        out = await self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": list(failure)})
        return bool(out.get("succeeded")), out

    # -- leases ---------------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        out = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(out["ID"])

    async def keepalive(self, lease: int) -> int:
        """The lease's TTL left after renewing it; 0 if etcd no longer knows it."""
        out = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(out.get("result", {}).get("TTL", 0))

    async def revoke_lease(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    # -- watch ----------------------------------------------------------------------------

    async def watch(self, prefix: bytes, start: int):
        """Yields (events, revision) for every change under prefix from revision start on,
        until the stream breaks (EtcdUnavailable: watch again from the last revision seen,
        on the next endpoint) or etcd no longer holds that history (EtcdError)."""
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start)}}
        n = self._good
        url = self.urls[n]
        try:
            async with self._http.stream("POST", url + "/v3/watch", json=body,
                                         timeout=httpx.Timeout(TIMEOUT, read=None)) as r:
                if r.status_code != 200:
                    raise EtcdUnavailable(f"{url}: HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        raise EtcdUnavailable(f"{url}: {str(msg['error'])[:120]}")
                    result = msg.get("result", {})
                    if result.get("compact_revision") not in (None, "0"):
                        raise EtcdError("etcd compacted the history the watch needs")
                    if result.get("canceled"):
                        raise EtcdUnavailable(f"{url}: the watch was cancelled")
                    if result.get("events"):
                        yield result["events"], int(result["header"]["revision"])
        except (httpx.HTTPError, ValueError) as exc:
            self._good = (n + 1) % len(self.urls)  # the next attempt goes elsewhere
            raise EtcdUnavailable(f"{url}: {type(exc).__name__} {exc}".strip()) from None
        self._good = (n + 1) % len(self.urls)
        raise EtcdUnavailable(f"{url}: the watch stream ended")


def put(key: bytes, value: bytes | str, lease: int = 0) -> dict:
    op = {"key": b64(key), "value": b64(value)}
    if lease:
        op["lease"] = str(lease)
    return {"request_put": op}


def delete(key: bytes) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def get(key: bytes) -> dict:
    return {"request_range": {"key": b64(key)}}


def absent(key: bytes) -> dict:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def unchanged(key: bytes, mod_revision: int) -> dict:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def value_is(key: bytes, value: bytes | str) -> dict:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}
