"""Shared fixtures: one tiny model per test session, built offline into a private cache folder."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before any longcat import resolves the cache: tests never write to the user's ~/.cache.
os.environ.setdefault("LONGCAT_CACHE", tempfile.mkdtemp(prefix="longcat-test-cache-"))


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from longcat.models.loading import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def tiny_components(tiny_model_path):
    from longcat.models.loading import load_components

    return load_components(tiny_model_path, device="cpu", precision="fp32")


@pytest.fixture(scope="session")
def engine(tiny_components):
    from longcat.adapters import AdapterManager
    from longcat.engine import EditEngine

    return EditEngine(tiny_components, adapter_manager=AdapterManager(tiny_components.transformer))


@pytest.fixture(scope="session")
def sample_image():
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(96, 128, 3) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A private redis-server on a free port for this test session (never a Redis we did not start)."""
    from tests.redis_proc import RedisProcess

    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
