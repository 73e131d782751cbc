"""`unweather bench`: FPS and latency of every backend against the PyTorch baseline."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
