"""A node's link to its relay, without I/O: the join, rekeys, pings, and reconnecting.

In:  receive(data, now)   a message from the relay (DATA, RESP, HINT or COOKIE)
     tick(now)            time passes
Out: Transmit.send(RELAY, ...), Transmit.relay_transport(tcp), and what receive()
     returns for the node to act on:
       (JOINED, reply)      the relay took us: our name, address, overlay MTU
       (REFUSED, (code, message))  the relay refused us for good
       (DIRECTORY, msg)     a directory update (control/directory.py)
       (REVOKED, None)      the operator revoked our key
       (CONTROL, msg)       any other message: publishing's
     (pongs are the link's own business: round trip, how the relay sees us, its clock)

    down ──(INIT; RESP ok)──> up ──(no word for RELAY_DEAD_AFTER)──> down
    While down it handshakes again after a backoff with jitter, forever, over UDP
    first, switching between UDP and TCP after every TCP_AFTER_FAILURES unanswered
    attempts and starting from the transport that worked last. While up it rekeys
    on the session's schedule on the transport that works, and pings every
    PING_INTERVAL (every second for FAST_PINGS after connecting): pings keep the NAT
    mapping open and carry the directory version we hold, so that the relay repairs
    what we missed.

    Several relays (a network on a shared store, --relay A,B,C, and every live relay the
    directory lists): the link is homed on one and moves to the next when it stops
    answering. While relayed traffic flows (node.py says so each tick) the link pings
    every ACTIVE_PING and the home is dead after ACTIVE_DEAD_AFTER without a word, so
    that relayed pairs resume within a TCP retransmission or two; idle, a ping left
    unanswered is retried every PING_RETRY, and PING_RETRIES unanswered end the home.
    A handshake that goes unanswered moves on to the next relay too. Sessions with peers
    do not depend on the relay and are kept.

A node is this link plus its peers (node.py); bench/swarm.py drives links alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from collections import Counter

from ..logs import event
from ..control.backoff import Backoff
from ..drops import Drop
from ..proto import endpoint, messages, wire
from ..proto.endpoint import RELAY
from ..proto.errors import ProtocolError
from ..proto.handshake import Identity, Timestamper
from ..proto.version import OURS
from .channel import decode_control, open_data, seal_control
from .effects import Env, Transmit
from .initiator import Initiator
from .sessions import IndexTable, KeyRing

log = logging.getLogger("tunneld.node")

PING_INTERVAL = 5.0  # also keeps the NAT mapping to the relay open
FAST_PINGS = 3  # after (re)connecting, ping every second a few times: fresh RTT, quick directory repair
RELAY_DEAD_AFTER = 16.0  # no word from the relay for this long: handshake again
HINT_INTERVAL = 1.0
TCP_AFTER_FAILURES = 2
ACTIVE_PING = 0.3  # several relays, relayed traffic flowing: how often we make sure the home answers
ACTIVE_DEAD_AFTER = 1.0  # ... and how long it may stay silent
PING_RETRY = 2.0  # several relays, idle: a ping unanswered this long is sent again (a relay
# busy with a join storm may take a second to answer: that must not move its nodes away)
PING_RETRIES = 3  # ... and after this many unanswered, the home is dead
MAX_RELAYS = 16
TRIES_PER_RELAY = 4  # unanswered handshakes (about 4 s) before a link that is down tries the next
# relay: one that is slow under a join storm must not be left for another, which would register
# the node a second time
UNANSWERED_PROBLEM = 3  # unanswered attempts before status and log say what to check
WRONG_KEY_PROBLEM = ("the relay at this address does not answer to the key in the join token (it says it "
                     "holds another key): the token was made by another relay, or --relay points elsewhere; "
                     "make a token with 'tunneld token' on this relay")
SILENT_PROBLEM = ("no answer from the relay after {n} attempts over UDP and TCP: check --relay, that "
                  "'tunneld serve' runs there, and that its port is open to UDP and TCP")

JOINED, REFUSED, DIRECTORY, REVOKED, CONTROL = "joined", "refused", "directory", "revoked", "control"


@dataclass(frozen=True)
class JoinRequest:
    """What a node tells the relay about itself in every handshake."""
    name: str
    credential: bytes | None  # the join token's id and secret: needed for the first join only
    underlay_mtu: int = 1500
    routes: tuple[str, ...] = ()
    lan: tuple[str, ...] = ()
    chain: bytes | None = None  # our network-lock chain (proto/lock.py), sent in every join


class RelayLink:
    def __init__(self, identity: Identity, relay_public: bytes, request: JoinRequest, out: Transmit, env: Env,
                 now: float, *, table: IndexTable | None = None, drops=None, counts=None,
                 timestamps: Timestamper | None = None, backoff: Backoff | None = None,
                 suite: int = wire.SUITE_AESGCM, joined_before: bool = False, relays: tuple[str, ...] = ()):
        self.key = relay_public
        self.relays: list[str] = list(relays)  # "host:port": configured first, then learned
        self.home = 0  # index in relays of the one we use
        self.active = False  # relayed traffic flows through the home (node.py sets it each tick)
        self.unanswered = 0  # pings since the last word from the relay
        self.tries_here = 0  # handshakes the home left unanswered since we moved to it
        self.request = request
        # The token goes to the relay until it took us once (here, or in a run before): the
        # key is our identity from then on. It goes again only if the relay forgot our key.
        self.send_token = request.credential is not None and not joined_before
        self.out = out
        self.env = env
        self.table = table if table is not None else IndexTable(env.random)
        self.drops = drops if drops is not None else Counter()
        self.counts = counts if counts is not None else Counter()
        self.timestamps = timestamps or Timestamper(env.wall_ns)
        self.backoff = backoff or Backoff(rng=env.uniform)
        self.keys = KeyRing(self.table, self)
        self.hs = Initiator(self.table, self, identity, relay_public, suite, env)
        self.next_attempt = now
        self.failures = 0
        self.up = False
        self.ever_joined = False
        self.last_rx = 0.0
        self.ping_seq = 0
        self.ping_at = 0.0  # engine time of the last ping, for the interval
        self.ping_sent = 0.0  # clock reading, for the round trip
        self.fast_pings = 0
        self.rtt: float | None = None
        self.skew: float | None = None  # the relay's clock less ours, seconds (doctor.py)
        self.hint_at = -HINT_INTERVAL
        self.wrong_key_hints = 0
        self.seen_as = ""  # our address as the relay sees it
        self.tcp = False
        self.good_tcp = False  # the transport of the last successful handshake
        self.hello = None  # what the relay announced when it took us
        self.problem = ""  # why the relay cannot take us now, when it said so
        self.directory_version: int | None = None  # what the node holds; pings report it

    # -- messages from the relay --------------------------------------------------------

    def receive(self, data: bytes, now: float):
        t = data[0] if data else 0
        if t == wire.DATA:
            return self._data(data, now)
        if t == wire.RESP:
            return self._resp(data, now)
        if t == wire.HINT:
            return self._hint(data, now)
        if t == wire.COOKIE:
            again = self.hs.take_cookie(data, now, self.drops, self.counts)
            if again is not None:
                self.out.send(RELAY, again)
        else:
            self.drops[Drop.BAD_TYPE] += 1
        return None

    def _data(self, data: bytes, now: float):
        _, plaintext = open_data(self.table, data, self.drops, self)
        if plaintext is None:
            return None
        self.last_rx = now
        self.unanswered = 0
        msg = decode_control(plaintext, self.drops)
        if msg is None:
            return None
        kind = msg["t"]
        if kind == "pong":
            if msg["n"] == self.ping_seq:
                self.rtt = self.env.monotonic() - self.ping_sent
                if type(msg.get("now")) is int:  # the relay's wall clock in ms, from 0.4 on
                    self.skew = msg["now"] / 1000 + self.rtt / 2 - self.env.wall()
            self.seen_as = msg["ep"]
            if "proof" in msg:  # the relay saw us at a new address: show it we are there
                self.control({"t": "ping", "n": self.ping_seq, "v": self.directory_version,
                              "proof": msg["proof"]})
        elif kind == "dir":
            return DIRECTORY, msg
        elif kind == "revoked":  # authenticated: only the relay holds this session's keys
            self.drop()
            return REVOKED, None
        else:
            return CONTROL, msg  # publishing's (engine/publish_node.py), or unexpected
        return None

    def _resp(self, data: bytes, now: float):
        if self.hs.initiation is None or data[8:12] != self.hs.index:
            self.drops[Drop.UNEXPECTED_RESPONSE] += 1
            return None
        try:
            s, payload = self.hs.complete(data, now)
            reply = messages.decode_join_reply(payload)
        except ProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return None
        problem = reply["hello"].problem(us="this node", them="the relay")
        if problem is not None:
            reply = {"ok": False, "code": "protocol_version", "retry": True, "hello": reply["hello"],
                     "error": problem}
        if not reply["ok"]:
            if reply["code"] == "unknown_key" and self.request.credential is not None and not self.send_token:
                log.warning("the relay does not know this node's key (its state was reset?); joining with the "
                            "token again", extra=event("relay_refused", code="unknown_key", retry=True))
                self.send_token = True
                self.next_attempt = now
                return None
            if reply["retry"]:
                self.problem = reply["error"]
                log.warning("the relay cannot take this node now (%s); retrying", reply["error"],
                            extra=event("relay_refused", code=reply["code"], error=reply["error"], retry=True))
                return None
            return REFUSED, (reply["code"], reply["error"])
        self.failures = self.tries_here = 0
        self.backoff.reset()
        self.send_token = False
        self.wrong_key_hints = 0
        self.good_tcp = self.tcp
        self.keys.install(s)
        self.counts["relay_handshakes_completed"] += 1
        self.last_rx = now
        if not self.up:
            log.info("connected to the relay over %s as %s (%s)", "TCP" if self.tcp else "UDP",
                     reply["name"], reply["address"],
                     extra=event("relay_connected", relay=self.endpoint, transport="tcp" if self.tcp else "udp",
                                 name=reply["name"], address=reply["address"]))
        self.up = True
        self.ever_joined = True
        self.hello = reply["hello"]
        self.problem = ""
        self.fast_pings = FAST_PINGS
        # Ping first: it confirms the new session to the relay, and its round trip must not
        # include what the node does with the reply.
        self.ping(now)
        return JOINED, reply

    def _hint(self, data: bytes, now: float):
        try:
            reason, _ = wire.parse_hint(data)
        except ProtocolError:
            self.drops[Drop.BAD_HINT] += 1
            return None
        if now - self.hint_at < HINT_INTERVAL:
            self.drops[Drop.HINT_RATE_LIMITED] += 1
            return None
        self.hint_at = now
        self.counts["hints"] += 1
        if reason == wire.HINT_NOT_MY_KEY:
            # Anyone can send this from the relay's address: it only colours what we say about
            # attempts that went unanswered (tick), and never ends or delays anything.
            self.wrong_key_hints += 1
            return None
        # Unauthenticated: at most a new handshake, and never more than once a second.
        init = self.hs.initiation
        if init is None or now - init.created >= HINT_INTERVAL:
            self.handshake(now)
        return None

    # -- what we send -------------------------------------------------------------------

    def handshake(self, now: float) -> None:
        if not self.up:
            # Reconnecting: start with the transport that worked last, and switch between UDP
            # and TCP after every TCP_AFTER_FAILURES unanswered attempts. While the link is up
            # (a rekey), stay on the transport that works.
            flip = (self.failures // TCP_AFTER_FAILURES) % 2 == 1
            tcp = self.good_tcp != flip
            if tcp != self.tcp:
                self.tcp = tcp
                self.out.relay_transport(tcp)
        r = self.request
        request = {"ts": self.timestamps(), "name": r.name, "token": r.credential if self.send_token else None,
                   "mtu": r.underlay_mtu, "routes": list(r.routes), "lan": list(r.lan), **OURS.wire()}
        if r.chain is not None:
            request["chain"] = r.chain
        payload = messages.encode(request)
        init = self.hs.start(payload, now)
        self.next_attempt = now + self.backoff.next()
        self.counts["relay_handshakes_sent"] += 1
        self.out.send(RELAY, init)

    def advertise(self, routes: tuple[str, ...], now: float) -> None:
        self.request = replace(self.request, routes=routes)
        if self.up:
            self.handshake(now)  # the relay takes a member's routes from its every handshake

    def control(self, msg: dict) -> None:
        sealed = seal_control(self.keys, msg)
        if sealed is not None:
            self.out.send(RELAY, sealed)

    def ping(self, now: float) -> None:
        self.unanswered += 1
        self.ping_seq += 1
        self.ping_sent = self.env.monotonic()
        self.ping_at = now
        self.control({"t": "ping", "n": self.ping_seq, "v": self.directory_version})

    def bye(self) -> None:
        """Tell the relay we are leaving, so that peers see it at once."""
        if self.up:
            self.control({"t": "bye"})

    def transport_lost(self, now: float) -> None:
        """The adapter's TCP stream to the relay closed: reconnect now, not after a timeout."""
        if self.up:
            log.warning("lost the TCP connection to the relay; reconnecting",
                        extra=event("relay_lost", relay=self.endpoint, reason="tcp_closed"))
        self.up = False
        self.hs.stop()
        self.next_attempt = now

    def drop(self) -> None:
        """Forget every key (a revoked node)."""
        self.keys.drop()
        self.hs.stop()
        self.up = False

    # -- time ---------------------------------------------------------------------------

    # -- several relays -----------------------------------------------------------------

    def learn(self, relays: list[str]) -> None:
        """Relays the directory lists: failover targets besides those configured."""
        for r in relays:
            if r not in self.relays and len(self.relays) < MAX_RELAYS:
                p = endpoint.parse(r)
                if p is not None and endpoint.reachable(p):
                    self.relays.append(r)

    @property
    def endpoint(self) -> str:
        return self.relays[self.home] if self.relays else ""

    def _fail_over(self, now: float, why: str) -> None:
        old = self.endpoint
        self.home = (self.home + 1) % len(self.relays)
        self.up = False
        self.hs.stop()
        self.unanswered = self.tries_here = 0
        self.next_attempt = now
        self.counts["relay_failovers"] += 1
        self.out.relay_endpoint(self.endpoint)
        log.warning("relay %s %s; moving to relay %s", old, why, self.endpoint,
                    extra=event("relay_failover", old=old, relay=self.endpoint, reason=why))

    def _home_dead(self, now: float) -> bool:
        if len(self.relays) < 2 or not self.up:
            return False
        if self.active:
            return now - self.last_rx > ACTIVE_DEAD_AFTER
        return self.unanswered >= PING_RETRIES and now - self.ping_at >= PING_RETRY

    # -- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self._home_dead(now):
            self._fail_over(now, f"has not answered for {now - self.last_rx:.1f} s")
        if self.up and now - self.last_rx > RELAY_DEAD_AFTER:
            self.up = False
            log.warning("no answer from the relay for %.0f s; reconnecting", now - self.last_rx,
                        extra=event("relay_lost", relay=self.endpoint, reason="silent",
                                    seconds=round(now - self.last_rx, 1)))
        if self.keys.expire(now, RELAY_DEAD_AFTER) and self.up:
            self.up = False  # no rekey went through in time: the session may not be used any more
            log.warning("the relay session expired without a rekey; reconnecting",
                        extra=event("relay_lost", relay=self.endpoint, reason="session_expired"))
        if not self.up:
            # next_attempt is set when a handshake goes out, so a refusal that says "retry"
            # waits its backoff too; transport_lost() and hints bring it forward.
            if now >= self.next_attempt:
                if self.hs.initiation is not None:
                    self.failures += 1
                    if self.failures >= UNANSWERED_PROBLEM:
                        self._unanswered()
                    self.tries_here += 1
                    if len(self.relays) > 1 and self.tries_here >= TRIES_PER_RELAY:
                        self._fail_over(now, "does not answer")
                self.handshake(now)
            return
        s = self.keys.current
        if self.hs.initiation is None and s is not None and s.wants_rekey(now):
            self.handshake(now)
        elif self.hs.initiation is not None and now >= self.next_attempt:
            self.handshake(now)
        if len(self.relays) > 1 and (self.active or self.unanswered):
            interval = ACTIVE_PING if self.active else PING_RETRY
        else:
            interval = 1.0 if self.fast_pings else PING_INTERVAL
        if now - self.ping_at >= interval:
            self.fast_pings = max(0, self.fast_pings - 1)
            self.ping(now)

    def _unanswered(self) -> None:
        problem = WRONG_KEY_PROBLEM if self.wrong_key_hints else SILENT_PROBLEM.format(n=self.failures)
        if problem.split(" after ")[0] != self.problem.split(" after ")[0]:
            log.warning("%s; retrying", problem, extra=event("relay_problem", relay=self.endpoint, problem=problem))
        self.problem = problem

    def status(self, label: str) -> dict:
        return {"endpoint": self.endpoint or label, "relays": list(self.relays), "connected": self.up,
                "transport": "tcp" if self.tcp else "udp",
                "rtt_ms": None if self.rtt is None or not self.up else round(self.rtt * 1000, 3),
                "clock_skew_s": None if self.skew is None else round(self.skew, 1), "seen_as": self.seen_as or None,
                "protocol": str(self.hello) if self.hello is not None else None,
                "problem": self.problem or None}
