"""The Noise core against the published cacophony test vectors for IK."""

import json
import pathlib

import pytest

from tunneld.proto.noise import (
    AESGCM_SHA256,
    CHACHAPOLY_SHA256,
    CipherState,
    HandshakeState,
    KeyPair,
    NoiseError,
)

_VECTORS = json.loads((pathlib.Path(__file__).with_name("noise_ik_vectors.json")).read_text())["vectors"]
_SUITES = {"AESGCM": AESGCM_SHA256, "ChaChaPoly": CHACHAPOLY_SHA256}


def _usable():
    for v in _VECTORS:
        _, pattern, _, cipher, hash_ = v["protocol_name"].split("_")
        if hash_ == "SHA256":
            yield pytest.param(v, _SUITES[cipher], id=v["protocol_name"])


def _kp(hexstr):
    return KeyPair.from_private_bytes(bytes.fromhex(hexstr))


@pytest.mark.parametrize("vector,suite", list(_usable()))
def test_ik_vector(vector, suite):
    init = HandshakeState(
        suite, "IK", True, bytes.fromhex(vector["init_prologue"]),
        s=_kp(vector["init_static"]), e=_kp(vector["init_ephemeral"]),
        rs=bytes.fromhex(vector["init_remote_static"]),
    )
    resp = HandshakeState(
        suite, "IK", False, bytes.fromhex(vector["resp_prologue"]),
        s=_kp(vector["resp_static"]), e=_kp(vector["resp_ephemeral"]),
    )
    assert init.protocol_name.decode() == vector["protocol_name"]
    messages = vector["messages"]
    # Handshake: message 0 from the initiator, message 1 from the responder.
    for i, (writer, reader) in enumerate(((init, resp), (resp, init))):
        payload = bytes.fromhex(messages[i]["payload"])
        wire = writer.write_message(payload)
        assert wire.hex() == messages[i]["ciphertext"]
        assert reader.read_message(wire) == payload
    assert init.finished and resp.finished
    assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert resp.rs == _kp(vector["init_static"]).public
    # Transport: the split keys, alternating directions as the vectors do.
    i2r, r2i = init.split()
    assert (i2r, r2i) == resp.split()
    send = {True: CipherState(suite), False: CipherState(suite)}
    recv = {True: CipherState(suite), False: CipherState(suite)}
    send[True].initialize_key(i2r); recv[False].initialize_key(i2r)
    send[False].initialize_key(r2i); recv[True].initialize_key(r2i)
    for i, m in enumerate(messages[2:]):
        from_initiator = i % 2 == 0
        payload = bytes.fromhex(m["payload"])
        wire = send[from_initiator].encrypt_with_ad(b"", payload)
        assert wire.hex() == m["ciphertext"]
        assert recv[not from_initiator].decrypt_with_ad(b"", wire) == payload


def test_tampered_message_is_refused():
    r = KeyPair.generate()
    init = HandshakeState(AESGCM_SHA256, "IK", True, b"p", s=KeyPair.generate(), rs=r.public)
    resp = HandshakeState(AESGCM_SHA256, "IK", False, b"p", s=r)
    wire = bytearray(init.write_message(b"hello"))
    wire[40] ^= 1
    with pytest.raises(NoiseError):
        resp.read_message(bytes(wire))


def test_wrong_responder_key_is_refused():
    init = HandshakeState(AESGCM_SHA256, "IK", True, b"p", s=KeyPair.generate(), rs=KeyPair.generate().public)
    other = HandshakeState(AESGCM_SHA256, "IK", False, b"p", s=KeyPair.generate())
    with pytest.raises(NoiseError):
        other.read_message(init.write_message(b""))


def test_low_order_point_is_refused():
    resp = HandshakeState(AESGCM_SHA256, "IK", False, b"p", s=KeyPair.generate())
    with pytest.raises(NoiseError):
        resp.read_message(bytes(32) + bytes(64))
