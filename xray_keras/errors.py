"""Errors that reach the user as one line, without a traceback."""


class UserError(Exception):
  """Bad input, data or environment; the message says what to do."""
