"""Reuse the twin suite's fixtures: the in-process reconciler (``twin``) and the end-to-end edge
(``start_edge``: mosquitto playing IoT Hub, the emulated hub, the workload API, the module process)."""

from tests.twin.conftest import broker, releases, start_edge, workload
from tests.twin.test_reconcile import twin

__all__ = ["broker", "releases", "start_edge", "twin", "workload"]
