"""The gateway's own exception tree.

Library errors (sqlite3, pydantic, OSError) are caught at the boundary and
re-raised as one of these, with a message that names the file, key, device or
endpoint, so that an operator reading one log line knows what to fix::

    GatewayError
    ├── ConfigError            a site or plan file is wrong (exit code 2)
    ├── JournalError           the SQLite journal cannot be used
    │   ├── JournalOpenError   unwritable path, corrupt file, newer schema (exit 2)
    │   ├── JournalClosed      intake is stopped (shutting down)
    │   └── JournalWriteError  a commit failed (disk full, I/O error)
    └── PartFailed             a service part gave up for good (not restarted)
"""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration file is missing, malformed or inconsistent.

    ``problems`` holds one line per problem, each naming file, key path, value
    and reason; ``str()`` joins them.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class JournalError(GatewayError):
    """The event journal cannot do what was asked."""


class JournalOpenError(JournalError):
    """The journal file cannot be opened safely; nothing was changed on disk."""


class JournalClosed(JournalError):
    """The journal no longer accepts events (the service is stopping)."""


class JournalWriteError(JournalError):
    """A group commit failed; the events in it are not durable."""


class PartFailed(GatewayError):
    """Raised by a service part that must not be restarted (e.g. bad device setup)."""
