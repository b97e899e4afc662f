"""gurukul-fast: the real-time backend of the Gurukul chat system."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
