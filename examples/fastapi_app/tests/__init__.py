"""Tests of the FastAPI example, against a real PostgreSQL."""
