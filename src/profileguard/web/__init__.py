"""The read-only HTTP side of profileguard: dashboard, Prometheus metrics, JSON API, probes."""

from __future__ import annotations

from profileguard.web.app import create_app, serve

__all__ = ["create_app", "serve"]
