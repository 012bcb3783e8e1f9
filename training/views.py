"""Views of the training app: thin, they call services and selectors."""

from __future__ import annotations
