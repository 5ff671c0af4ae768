"""Shared test settings: offline Hub, deterministic CPU, the `slow` marker, and small natural photographs."""

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests (small, still run in CI)")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def natural_images() -> torch.Tensor:
    """Four 256 x 256 crops of scikit-image sample photographs, ``(4, 3, 256, 256)`` in [-1, 1]."""
    from skimage import data

    crops = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = getattr(data, name)()[:256, :256, :3].astype(np.float32) / 127.5 - 1.0
        crops.append(torch.from_numpy(photo).permute(2, 0, 1))
    return torch.stack(crops)
