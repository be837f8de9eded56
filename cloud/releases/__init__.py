"""Releases and fleet deployment: signing keys, publishing, manifests, schema validation, IoT Hub REST.

The release block and its signature are defined once, in ``edge_module.release``; this package builds on it.
"""
