"""Fixtures shared by the test files."""
import pytest
import torch


@pytest.fixture
def restore_threads():
    """Puts torch's thread count back after a test that changes it (the tools' --threads)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread(restore_threads):
    """Tiny models: a second thread only adds synchronization (and stalls on a busy machine)."""
    torch.set_num_threads(1)
