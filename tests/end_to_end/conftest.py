"""Registers the harness's fixtures (a real server, phones with their own stores) for pytest."""

from bridge_harness import *  # noqa: F401,F403
