"""Errors of the protocol core, split by whose fault they are."""


class ProtocolError(Exception):
    """The remote side sent something malformed. Drop it, count it, carry on."""


class HandshakeError(ProtocolError):
    """A handshake message that is well-formed but fails authentication or policy."""
