import os
import warnings

import pytest
import torch

# Parallel workers share two cores: one torch thread each (two-thread processes slow each other down).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def pytest_collection_modifyitems(config, items):
    # The docs build shows the tutorials' stored executions: run it after the tutorial tests.
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_docs.py::test_docs_build"))
