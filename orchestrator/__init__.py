"""parity's host side: CLI, variant registry, manifests, environments, diff engine and reports."""

__version__ = "0.1.0"
