import os

import pytest
import torch

# Two cores are shared by everything in CI: a fixed, small thread count keeps timings sane and results stable.
torch.set_num_threads(int(os.environ.get("QWEN25VL_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: a tiny model's small ops run several times faster on one thread than on two
    when the other core is busy (shared CI); training tests opt in with `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
