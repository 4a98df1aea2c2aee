"""Where the examples find Kognic: the real hosts, unless the environment names others.

The tests (tests/test_examples.py) run every example against annopull's fake Kognic by
setting ``KOGNIC_HOST``, ``KOGNIC_AUTH_HOST`` and ``KOGNIC_ANNOTATION_INTEGRATION_HOST``;
left unset, the clients' defaults (Kognic's own hosts) apply.
"""

from __future__ import annotations

import os

_VARIABLES = {
    "host": "KOGNIC_HOST",
    "auth_host": "KOGNIC_AUTH_HOST",
    "annotation_integration_api_host": "KOGNIC_ANNOTATION_INTEGRATION_HOST",
}


def kognic_hosts() -> dict[str, str]:
    """The constructor arguments of KognicIOClient for the hosts set in the environment."""
    return {
        name: os.environ[variable]
        for name, variable in _VARIABLES.items()
        if variable in os.environ
    }
