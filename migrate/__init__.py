"""graph-migrate: move legacy Docker image storage to the content-addressable layout."""

__version__ = "0.1.0.dev0"
