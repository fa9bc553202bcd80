"""Config classes of the video plugin (no torch here)."""

from __future__ import annotations
