"""Every test runs on CPU in GRAPH_MODE, the mode used on Ascend."""
import os
import pathlib
import sys

import mindspore as ms
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GOLDEN = pathlib.Path(os.environ.get("DVT_GOLDEN_DIR", REPO.parent / "shared" / "golden"))

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


@pytest.fixture(scope="session")
def golden_dir():
    if not GOLDEN.is_dir():
        pytest.fail(f"golden files not found at {GOLDEN} (set DVT_GOLDEN_DIR)")
    return GOLDEN


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory):
    """One directory for golden checkpoints converted once per session."""
    return tmp_path_factory.mktemp("converted")
