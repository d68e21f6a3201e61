"""Store-and-forward to the central billing and ticket system.

The contract: ../shared/contracts/central-api.md.
"""
