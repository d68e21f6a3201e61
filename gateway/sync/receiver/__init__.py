"""The reference central receiver: our own implementation of the central API.

../shared/contracts/central-api.md is the contract of a system this project
does not own. Tests, the demo and the sync benchmark run against this
faithful stand-in (validation, idempotency, auth, limits), which stores what
it accepts in its own SQLite file and can be told to misbehave.
``CentralReceiver`` runs it in a thread; ``gateway central-sim`` as a process.
"""

from gateway.sync.receiver.faults import Faults
from gateway.sync.receiver.server import CentralReceiver

__all__ = ["CentralReceiver", "Faults"]
