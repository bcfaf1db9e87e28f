"""The read-only HTTP side of profileguard: dashboard, Prometheus metrics, JSON API, probes."""

from __future__ import annotations

from profileguard.extras import require_extra

require_extra("server", "the profileguard web server")

from profileguard.web.app import create_app, serve  # noqa: E402

__all__ = ["create_app", "serve"]
