"""Stand-ins for the platforms' official clients, running on annopull's engine.

:mod:`annopull.compat.kognic_io` replaces ``kognic-io``'s annotation reads: change the import
line of a script and its loops fetch concurrently.
"""

__all__: list[str] = []
