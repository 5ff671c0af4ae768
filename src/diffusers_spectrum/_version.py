"""The package version, in one place (imported by the package root and by the exporters)."""

__version__ = "0.1.0"
