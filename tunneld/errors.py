"""Errors an operator sees: one line on stderr, and an exit code (README, "Commands")."""

import errno

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class TunneldError(Exception):
    """Says what went wrong and what to do, in one line."""

    exit_code = EXIT_FAILURE


class ConfigError(TunneldError):
    """A bad flag, address, file or permission. Nothing was changed."""

    exit_code = EXIT_USAGE


class HostError(TunneldError):
    """The host refused something (a device, a permission, a route)."""

    exit_code = EXIT_FAILURE


def bind_error(exc: OSError, host: str, port: int, proto: str, option: str) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{proto} port {port} is already in use on {host}; stop what holds it "
                           f"or choose another {option}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{host} is not an address of this host; fix {option}")
    if exc.errno == errno.EACCES:
        return ConfigError(f"not allowed to bind {proto} port {port}; run as root or choose a port above 1023")
    return ConfigError(f"cannot bind {proto} {host}:{port}: {exc.strerror}")
