"""Happy Eyeballs (RFC 8305) for a node's relays, pure: in which order to try a relay's
addresses when a name resolves to several of both families. (IPv6, issue 17: nothing uses
it yet.)

  order(addresses, last_good)   IPv6 first, then the families interleaved (RFC 8305 §4), the
                                address that worked last at the front

A node tries the next address ATTEMPT_DELAY after the last one went unanswered, not when it
gave up on it (§5), and stays on the first that answers.
"""

from __future__ import annotations

ATTEMPT_DELAY = 0.25  # RFC 8305's recommended Connection Attempt Delay


def order(addresses, last_good=None) -> list:
    """addresses: (host, port) tuples as the resolver gave them; duplicates dropped."""
    seen, v6, v4 = set(), [], []
    for ep in addresses:
        if ep in seen:
            continue
        seen.add(ep)
        (v6 if ":" in ep[0] else v4).append(ep)
    out = []
    for i in range(max(len(v6), len(v4))):
        out += v6[i:i + 1] + v4[i:i + 1]
    if last_good in seen:
        out.remove(last_good)
        out.insert(0, last_good)
    return out
