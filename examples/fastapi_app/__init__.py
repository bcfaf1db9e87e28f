"""Example: a FastAPI app that uses profileguard for sign-up, OAuth first login and profiles."""
