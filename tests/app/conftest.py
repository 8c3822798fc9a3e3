from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


@pytest.fixture(scope="session")
def settings(tiny_model_dir) -> Settings:
    return Settings(model_dir=tiny_model_dir, device="cpu", max_upload_bytes=200_000,
                    max_images_per_request=8, max_image_pixels=4_000_000)


@pytest.fixture(scope="session")
def client(settings):
    """The real app, lifespan and all, over the tiny exported models."""
    with TestClient(create_app(settings)) as client:
        yield client
