"""One module per ``python -m cloud`` subcommand (see cloud/__main__.py)."""
