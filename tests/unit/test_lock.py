"""The network lock: its key, endorsed tokens and chains, and the command line around them."""

import os
import stat

from tunneld.proto import lock
from tunneld.proto.token import JoinToken
from tests.unit.test_cli import one_line_error, relay_state, tunneld

KEY = bytes(range(1, 33))


def test_a_chain_verifies_only_for_its_key_name_and_lock():
    enroll = os.urandom(32)
    public, sig1 = lock.endorse(KEY, b"tokenid1", enroll)
    chain = lock.chain(public, b"tokenid1", enroll, sig1, b"k" * 32, "alpha")
    assert len(chain) == lock.CHAIN_LEN and lock.verify(public, chain, b"k" * 32, "alpha")
    assert not lock.verify(public, chain, b"x" * 32, "alpha")  # another key
    assert not lock.verify(public, chain, b"k" * 32, "bravo")  # another name
    assert not lock.verify(lock.public_of(os.urandom(32)), chain, b"k" * 32, "alpha")  # another lock
    for i in range(0, lock.CHAIN_LEN, 7):  # any bit flipped anywhere
        bad = bytearray(chain)
        bad[i] ^= 1
        assert not lock.verify(public, bytes(bad), b"k" * 32, "alpha")
    # an enroll key of the attacker's own, signed by nobody
    mine = os.urandom(32)
    forged = b"tokenid1" + lock.public_of(mine) + sig1 + lock.chain(public, b"tokenid1", mine, sig1, b"a" * 32,
                                                                    "alpha")[104:]
    assert not lock.verify(public, forged, b"a" * 32, "alpha")


def test_lock_init_and_endorse_from_the_command_line(tmp_path):
    key = tmp_path / "lock.key"
    proc = tunneld("lock", "init", "--out", str(key))
    assert proc.returncode == 0, proc.stderr
    public = lock.parse_public(proc.stdout.strip().splitlines()[-1])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    one_line_error(tunneld("lock", "init", "--out", str(key)), 2, "never overwritten")
    token = JoinToken.new(b"r" * 32, os.urandom)
    proc = tunneld("lock", "endorse", token.encode(), "--key", str(key))
    assert proc.returncode == 0, proc.stderr
    endorsed = JoinToken.parse(proc.stdout.strip())
    assert proc.stdout.startswith("tde1.") and len(proc.stdout.strip().splitlines()) == 1
    assert endorsed.credential == token.credential and endorsed.endorsement.lock_public == public
    e = endorsed.endorsement
    assert lock.verify(public, lock.chain(public, token.token_id, e.enroll_seed, e.sig1, b"n" * 32, "n"), b"n" * 32, "n")
    key.chmod(0o644)
    one_line_error(tunneld("lock", "endorse", token.encode(), "--key", str(key)), 2, "chmod 600")
    key.chmod(0o600)
    one_line_error(tunneld("lock", "endorse", "tdj1.garbage", "--key", str(key)), 2, "join token")
    one_line_error(tunneld("serve", "--listen", "192.0.2.1:7000", "--lock", "tdl1.short"), 2, "--lock")


def test_tokens_are_single_use_by_default(tmp_path):
    state = relay_state(tmp_path / "relay")
    one = tunneld("token", "--state-dir", state).stdout.strip()
    many = tunneld("token", "--state-dir", state, "--uses", "0").stdout.strip()
    three = tunneld("token", "--state-dir", state, "--uses", "3").stdout.strip()
    listed = tunneld("token", "--state-dir", state, "--list").stdout
    for token, uses in ((one, "0/1"), (many, "0/any"), (three, "0/3")):
        line = next(l for l in listed.splitlines() if JoinToken.parse(token).token_id.hex() in l)
        assert uses in line, line
    one_line_error(tunneld("token", "--state-dir", state, "--uses", "-1"), 2, "--uses")
