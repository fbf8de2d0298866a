"""Every test runs on CPU in GRAPH_MODE, the mode used on Ascend."""
import os
import pathlib

import mindspore as ms
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = pathlib.Path(os.environ.get("DVT_GOLDEN_DIR", REPO.parent / "shared" / "golden"))

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


@pytest.fixture(scope="session")
def golden_dir():
    if not GOLDEN.is_dir():
        pytest.fail(f"golden files not found at {GOLDEN} (set DVT_GOLDEN_DIR)")
    return GOLDEN
