"""Site Gateway: an on-site edge gateway for property sites.

Devices → adapters → events → journal (SQLite, committed first) → alarms, live
state, sync to central. See README.md and ../shared/DESIGN.md.
"""

__version__ = "0.1.0"
