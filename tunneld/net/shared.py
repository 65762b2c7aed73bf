"""A relay on a store shared with other relays (etcd): the identity they share, this
relay's lease and record, and the watch that brings the others' changes to the engine
(engine/cluster.py).

While etcd is away the relay goes on forwarding for every node it knows, with the
directory as it is; new registrations, token use and revocations are refused with
one line (control/registry.py, net/relayd.py), and nodes retry. When etcd answers
again the watch resumes where it stopped and the relay writes its presence again:
no restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from time import monotonic

from ..errors import ConfigError
from ..proto import mesh
from ..state import KEY_FILE, load_identity
from ..store.base import StoreError
from ..store.etcd import LEASE_TTL, EtcdStore
from ..store.etcdgw import EtcdError

log = logging.getLogger("tunneld.relay")

RENEW_EVERY = 2.0  # a fifth of the lease: a few lost or slow renewals must not end it
WATCH_BACKOFF = (0.1, 2.0)


async def shared_identity(store: EtcdStore, state_dir: str, url: str):
    """The network's relay key: made here if the store holds no network yet, else the copy
    in state_dir that must match the store's."""
    try:
        kvs, _, _ = await store.client.range(store.key("meta", "public_key"))
    except StoreError as exc:
        raise ConfigError(f"cannot reach the store {url}: {exc}") from None
    key_path = os.path.join(state_dir, KEY_FILE)
    if kvs:
        from ..store.etcdgw import unb64
        held = unb64(kvs[0].get("value")).decode()
        if not os.path.exists(key_path):
            raise ConfigError(f"the store {url} already holds a network (relay key {held[:16]}…): copy its "
                              f"private.key from one of its relays into {state_dir} (mode 0600) and start again")
        identity = load_identity(state_dir, create=False)
        if identity.public.hex() != held:
            raise ConfigError(f"{key_path} is not the key of the network in the store {url} (relay key "
                              f"{held[:16]}…): copy private.key from one of its relays, or use another "
                              "--store-prefix for a new network")
        return identity
    identity = load_identity(state_dir)
    winner = await store.claim_meta("public_key", identity.public.hex())
    if winner != identity.public.hex():
        raise ConfigError(f"another relay created the network in {url} at the same moment: copy its "
                          f"private.key into {state_dir} (mode 0600) and start again")
    log.info("created the network's relay identity in the store; copy %s to every further relay", key_path)
    return identity


class SharedStore:
    def __init__(self, daemon, store: EtcdStore, identity, listen: str):
        self.daemon = daemon
        self.store = store
        self.listen = listen
        self.boot = os.urandom(8)
        self.record = {"listen": listen, "boot": self.boot.hex(), "started": time.time()}
        codec = mesh.Mesh(mesh.derive(identity.keypair.private_bytes()), self.boot)
        daemon.engine.join_cluster(listen, codec, monotonic())
        self._tasks: list[asyncio.Task] = []

    @property
    def engine(self):
        return self.daemon.engine

    async def start(self) -> None:
        store, cluster = self.store, self.engine.cluster
        await store.start_lease(LEASE_TTL)
        await store.announce(self.listen, self.record)
        now = monotonic()
        for relay_id, record in store.relays.items():
            cluster.remote("relays", relay_id, json.dumps(record).encode(), now)
        for name, v in store.presence.items():
            cluster.remote("presence", name, json.dumps(v).encode(), now)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._renew())]
        log.info("relay %s on the shared store, with %d other relay(s)", self.listen, len(cluster.relays))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        try:  # the others learn at once that we left, not when the lease runs out
            await asyncio.wait_for(self.store.withdraw(self.listen), 3.0)
        except (StoreError, asyncio.TimeoutError):
            pass

    def _trouble(self, why: str) -> None:
        registry = self.engine.registry
        if not registry.unavailable:
            log.error("the store is unreachable (%s): forwarding goes on, joins of new nodes and revocations "
                      "wait until it is back", why)
        registry.unavailable = why[:150]

    def _back(self) -> None:
        if self.engine.registry.unavailable:
            log.info("the store answers again")
            self.engine.registry.unavailable = ""
            self.engine.cluster.resync()  # what we wrote while it was away may be lost
            self.daemon.after_input()

    async def _renew(self) -> None:
        store = self.store
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                if not await store.renew():
                    log.warning("etcd no longer knows this relay's lease; announcing the relay again")
                    await store.start_lease(LEASE_TTL)
                    await store.announce(self.listen, self.record)
                    self.engine.registry.unavailable = self.engine.registry.unavailable or "lease lost"
                self._back()
            except StoreError as exc:
                self._trouble(str(exc))

    async def _watch(self) -> None:
        store, cluster = self.store, self.engine.cluster
        pause = WATCH_BACKOFF[0]
        while True:
            try:
                async for kind, name, value in store.changes(store.revision + 1):
                    cluster.remote(kind, name, value, monotonic())
                    self.daemon.after_input()
                    pause = WATCH_BACKOFF[0]
            except EtcdError as exc:  # the history we need is gone: read everything again
                log.warning("%s; reading the whole store again", exc)
                await self._reload()
            except StoreError as exc:
                log.debug("the store's watch broke (%s); watching again", exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_BACKOFF[1])

    async def _reload(self) -> None:
        try:
            snap = await self.store.load()
        except StoreError:
            return
        cluster, now = self.engine.cluster, monotonic()
        from ..store.records import node_value, token_value
        for r in snap.nodes:
            cluster.remote("nodes", r.name, node_value(r).encode(), now)
        for key in snap.revoked_keys:
            cluster.remote("revoked", key.hex(), b"{}", now)
        for t in snap.tokens:
            cluster.remote("tokens", t.token_id.hex(), token_value(t).encode(), now)
        for relay_id in set(cluster.relays) - set(self.store.relays):
            cluster.remote("relays", relay_id, None, now)
        for relay_id, record in self.store.relays.items():
            cluster.remote("relays", relay_id, json.dumps(record).encode(), now)
        for name in set(cluster.presence) - set(self.store.presence):
            cluster.remote("presence", name, None, now)
        for name, v in self.store.presence.items():
            cluster.remote("presence", name, json.dumps(v).encode(), now)
