from edge_module.rest.app import create_app

__all__ = ["create_app"]
