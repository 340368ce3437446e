import os
import warnings

import pytest
import torch

# Parallel workers share two cores: one torch thread each (DESIGN.md, "Habits").
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
