import os

import pytest
import torch

# Two cores are shared by everything in CI: a fixed, small thread count keeps timings sane and results stable.
torch.set_num_threads(int(os.environ.get("QWEN25VL_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
