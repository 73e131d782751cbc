"""Shared fixtures: CPU by default; GPU, TensorRT, RTSP and Ray tests skip with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    # TF32 off and a fixed seed: golden comparisons must not depend on earlier tests.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _packaged_cpu_backend(monkeypatch):
    """`backend="auto"` on the CPU takes the packaged choice instead of timing the backends here.

    Timed, the backend a test gets would hang on this machine's load, and the first open would cost
    an ONNX export; tests/test_engine_calibrate.py overrides this fixture to test the timing itself.
    """
    from unweather.engine import calibrate

    monkeypatch.setattr(calibrate, "calibrated_choice", lambda *args, **kwargs: None)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture(scope="module")
def meta_dir(tmp_path_factory) -> Path:
    """A tiny synthetic data set: 3 photos, 32 px crops, rain/snow/haze and a clean set."""
    import cv2

    from unweather.training.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    photos = []
    yy, xx = np.mgrid[0:80, 0:96]
    for i in range(3):
        image = np.stack([(xx * (i + 1) * 2) % 255, (yy * 3 + 40 * i) % 255, (xx + yy) % 255], -1)
        image = (image + rng.integers(0, 20, image.shape)).clip(0, 255).astype(np.uint8)
        path = root / f"photo{i}.png"
        cv2.imwrite(str(path), image)
        photos.append(path)
    synthesize(photos, root / "data", crops=2, size=32, seed=0, valid_fraction=0.34, clean_pairs=1)
    return root / "data"


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module: tiny tensors gain nothing from threads, and on a busy machine
    spinning threads cost a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
