"""The package version (one place; the build and `profileguard --version` read it)."""

__version__ = "0.1.0"
