"""Exceptions shared across areas."""


class ThriftyError(Exception):
    """Base class for errors thrifty reports to its users without a traceback."""


class UsageError(ThriftyError):
    """Bad input from the user (a file, a flag, a value): printed as one clear line."""
