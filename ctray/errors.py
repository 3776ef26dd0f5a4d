"""Errors that mean "the user's input or setup is wrong": the CLI prints them plainly."""


class UserError(Exception):
    """Bad configuration, input or environment; the message says what and where."""
