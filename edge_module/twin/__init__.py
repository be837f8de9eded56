"""The module twin: pull model releases from desired properties, report status, serve edgeHub routes."""

from edge_module.twin.connection import edge_environment
from edge_module.twin.service import iot_edge_service

__all__ = ["edge_environment", "iot_edge_service"]
