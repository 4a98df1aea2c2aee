"""Fake Kognic and AnnoLab servers on loopback, for tests, benchmarks and demos.

Public like ``aiohttp.test_utils``: each fake answers exactly as the platform's API
contract says, with scripted faults (:class:`Fault`), seeded chaos on a fraction of all
requests (:class:`Chaos`) and request statistics::

    async with FakePlatforms() as fakes:
        fakes.kognic.faults.add(Fault(target="content", status=503, times=2))
        ...

    async with FakeKognic(chaos=Chaos(seed=1, error_rate=0.1, cut_rate=0.05)) as kognic:
        ...

``annopull.testing.serve.fake_serve`` runs both from the command line; it is not
imported here so that ``python -m annopull.testing.serve`` runs cleanly.
"""

from annopull.testing.annolab import AnnoLabProject, AnnoLabStats, FakeAnnoLab
from annopull.testing.chaos import Chaos, ChaosEvent
from annopull.testing.faults import Fault, FaultPlan
from annopull.testing.kognic import (
    ExpectedAnnotation,
    ExpectedSceneAnnotation,
    FakeKognic,
    KognicProject,
    KognicStats,
)
from annopull.testing.platforms import FakePlatforms, run_in_thread

__all__ = [
    "AnnoLabProject",
    "AnnoLabStats",
    "Chaos",
    "ChaosEvent",
    "ExpectedAnnotation",
    "ExpectedSceneAnnotation",
    "FakeAnnoLab",
    "FakeKognic",
    "FakePlatforms",
    "Fault",
    "FaultPlan",
    "KognicProject",
    "KognicStats",
    "run_in_thread",
]
