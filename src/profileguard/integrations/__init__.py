"""Integrations with web frameworks; each module imports its framework, the core package none."""
