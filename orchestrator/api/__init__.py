"""The HTTP API: an entry point, like the CLI (neither imports the other; see
``[tool.importlinter]`` in pyproject.toml)."""

from __future__ import annotations

__all__: list[str] = []
