"""The enforcement gateway service: evidence store, signing, custody log, uplinks, workflows, CLI."""

__version__ = "0.1.0"
