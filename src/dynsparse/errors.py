"""Errors that reach the user as one clear line."""


class UserError(ValueError):
    """Bad input or an unusable file: the message names the bad value and what is allowed."""
