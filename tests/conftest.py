"""Shared fixtures: CPU by default; GPU, TensorRT, RTSP and Ray tests skip with a reason."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    # TF32 off and a fixed seed: golden comparisons must not depend on earlier tests.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    yield


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")
