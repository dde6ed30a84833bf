"""What the AWQ tests share."""

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: one thread is faster and immune to other jobs contending for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
