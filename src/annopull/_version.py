"""The installed version of annopull, read from package metadata.

pyproject.toml is the one place the version is written; everything else (``__version__``,
the User-Agent) reads it from here. This module imports nothing of annopull, so every layer
can use it without importing the package root.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "__version__"]

#: The distribution name on PyPI, also the product token of the User-Agent.
DISTRIBUTION = "annopull"


def installed_version(distribution: str) -> str:
    """Return the installed version of ``distribution``, or ``"0+unknown"`` when it is not.

    Args:
        distribution: the distribution name to look up.
    """
    try:
        return version(distribution)
    except PackageNotFoundError:
        # Imported from a source tree that was never installed: a valid PEP 440 version
        # that no release has, rather than a guess.
        return "0+unknown"


__version__ = installed_version(DISTRIBUTION)
