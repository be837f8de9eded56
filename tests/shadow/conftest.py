"""The twin suite's end-to-end fixtures (mosquitto playing IoT Hub, the emulated hub, the workload API,
the module process, the release server) for the shadow tests."""

from tests.twin.conftest import broker, releases, start_edge, workload

__all__ = ["broker", "releases", "start_edge", "workload"]
