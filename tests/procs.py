"""Test helpers around real service processes."""

from __future__ import annotations

from longcat.launch import ROOT, free_port  # noqa: F401
from longcat.launch import ServiceProcess as Service  # noqa: F401


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
