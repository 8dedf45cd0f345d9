"""Integration tests run the real embedded SmolLM2 (converted once into the user cache)."""

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2():
    from robustedit.models.load import load_model

    torch.manual_seed(0)
    return load_model("smollm2")


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
