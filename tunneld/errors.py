"""Errors an operator sees: one line on stderr, and an exit code (README, "Commands")."""

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

