"""The error family: every error mailsvc raises on purpose descends from MailsvcError."""


class MailsvcError(Exception):
    """Root of all mailsvc errors."""


class ConfigError(MailsvcError):
    """The settings are wrong; the message says which and why."""


class ParseError(MailsvcError):
    """A message could not be parsed into anything usable."""


class StoreUnavailable(MailsvcError):
    """The database could not be reached or did not commit: try again later."""


class RuleViolation(MailsvcError):
    """A business rule of the CRM forbids the requested change."""


class NotFound(MailsvcError):
    """A record that was asked for does not exist."""


class Conflict(MailsvcError):
    """The change would duplicate or contradict an existing record."""
