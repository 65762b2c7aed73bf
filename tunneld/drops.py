"""Why a message, packet or stream was dropped: one name per reason, shared by the engines,
the daemons, `tunneld status` and the tests.

Drops are counted, never logged per packet: `drops[Drop.REPLAY] += 1`. A Drop is a str,
so counters keyed by it print and serialise as their names.
"""

from __future__ import annotations

from enum import StrEnum


class Drop(StrEnum):
    # Anything, anywhere
    EMPTY = "empty"
    BAD_TYPE = "bad_type"
    INTERNAL_ERROR = "internal_error"  # a bug, not the sender's fault (the daemon counts it)

    # Transport sessions (proto/session.py)
    SHORT = "short"
    REPLAY = "replay"
    TOO_OLD = "too_old"  # below the replay window: reordered by more than it spans, or replayed long after
    AUTH = "auth"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_EXHAUSTED = "session_exhausted"

    # Handshakes
    HANDSHAKE_MALFORMED = "handshake_malformed"
    HANDSHAKE_WRONG_KEY = "handshake_wrong_key"  # mac1 for another key: not meant for us
    HANDSHAKE_INVALID = "handshake_invalid"
    HANDSHAKE_REPLAY = "handshake_replay"
    HANDSHAKE_UNKNOWN_KEY = "handshake_unknown_key"
    HANDSHAKE_WRONG_PEER = "handshake_wrong_peer"
    HANDSHAKE_NEEDS_COOKIE = "handshake_needs_cookie"
    HANDSHAKE_RATE_LIMITED = "handshake_rate_limited"
    HANDSHAKE_GAVE_UP = "handshake_gave_up"
    PEER_VERSION = "peer_version"  # a peer whose protocol range does not meet ours
    UNEXPECTED_RESPONSE = "unexpected_response"
    UNEXPECTED_COOKIE = "unexpected_cookie"
    BAD_COOKIE = "bad_cookie"
    QUEUE_DROPPED = "queue_dropped"  # packets that waited for a handshake that never finished

    # Control messages between a node and the relay
    BAD_CONTROL = "bad_control"
    UNEXPECTED_CONTROL = "unexpected_control"
    JOIN_MALFORMED = "join_malformed"
    BAD_HINT = "bad_hint"
    HINT_RATE_LIMITED = "hint_rate_limited"

    # The relay's forwarding
    RELAYED_UNKNOWN_SOURCE = "relayed_unknown_source"
    WORKER_HANDOFF_FULL = "worker_handoff_full"  # a worker's hand-offs overflowed its socket to the main process
    WORKER_HANDOFF_RATE = "worker_handoff_rate_limited"  # strangers' datagrams beyond a worker's share
    RELAYED_NO_DESTINATION = "relayed_no_destination"
    ENDPOINT_UNPROVEN = "endpoint_unproven"  # a member "moved" and has not yet proved the new address
    ENDPOINT_IN_USE = "endpoint_in_use"  # ... onto another live member's endpoint, unproven
    SNAPSHOT_RATE_LIMITED = "snapshot_rate_limited"

    # A node's receive side
    RELAYED_UNKNOWN_PEER = "relayed_unknown_peer"
    DIRECT_BAD_SOURCE = "direct_bad_source"
    DIRECT_UNKNOWN_SESSION = "direct_unknown_session"
    DIRECT_BAD_TYPE = "direct_bad_type"
    SPOOFED_SOURCE = "spoofed_source"
    BAD_INNER_PACKET = "bad_inner_packet"
    ROUTE_REFUSED = "route_refused"
    PEER_UNENDORSED = "peer_unendorsed"  # a directory key the network lock does not endorse
    PROBE_WRONG_PATH = "probe_wrong_path"  # a probe reply from elsewhere than the probe went
    PUBLISH_NOT_SERVED = "publish_not_served"  # the relay asked for a port it does not publish here
    POLICY_DENIED = "policy_denied"  # opened towards the node, and no rule of its policy allows it (policy.py)

    # A node's TUN side
    TUN_NOT_IPV4 = "tun_not_ipv4"
    TUN_NO_PEER = "tun_no_peer"
    TUN_SHORT = "tun_short"
    TUN_GSO_UNSUPPORTED = "tun_gso_unsupported"
    TUN_GSO_MALFORMED = "tun_gso_malformed"
    TUN_READ_ERROR = "tun_read_error"
    TUN_WRITE_ERROR = "tun_write_error"

    # Sockets and streams (the daemons)
    UDP_RECV_ERROR = "udp_recv_error"
    STALE = "stale"  # peers' data behind a standing queue in the socket's buffer: dropped unopened (net/backlog.py)
    UDP_SEND_FULL = "udp_send_full"
    UDP_SEND_ERROR = "udp_send_error"
    TCP_BAD_FRAMING = "tcp_bad_framing"
    TCP_TRUNCATED_FRAME = "tcp_truncated_frame"
    TCP_BACKPRESSURE = "tcp_backpressure"
    TCP_TOO_MANY_STREAMS = "tcp_too_many_streams"
    TCP_TOO_MANY_FROM_SOURCE = "tcp_too_many_from_source"
    TCP_UNAUTHENTICATED_TIMEOUT = "tcp_unauthenticated_timeout"
    TCP_CONNECT_FAILED = "tcp_connect_failed"
    MESH_MALFORMED = "mesh_malformed"  # relay to relay (proto/mesh.py)
    MESH_UNKNOWN_RELAY = "mesh_unknown_relay"  # a boot etcd does not list as a live relay
    MESH_REPLAY = "mesh_replay"
    MESH_INVALID = "mesh_invalid"  # failed authentication: not from a relay of this network
    MESH_NO_DESTINATION = "mesh_no_destination"  # its destination is not (or no longer) homed here
    RELAYED_HOME_UNREACHABLE = "relayed_home_unreachable"  # homed on a relay we have no address for
    STORE_ERROR = "store_error"
    PUBLISH_NOT_HOMED = "publish_not_homed"  # another relay asked for a node not (or no longer) homed here
    PUBLISH_UNKNOWN_FLOW = "publish_unknown_flow"  # a node's datagram for a flow that is not its, or gone
    WORK_UNPROVEN = "work_unproven"  # a work connection naming no pending connection, or without k's proof
    STREAM_FORGED = "stream_forged"  # a published connection's sealed chunk failed to open: cut  # a registration the relay's store refused or could not write
