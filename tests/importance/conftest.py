"""One intra-op thread: these tests run many tiny forward passes, where a second (spinning) OpenMP thread on a
loaded shared CPU makes them ~10x slower, not faster."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
