import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Ray workers import stages and fake responders from tests/ modules. Every local Ray
# started from this process (also by code under test calling ray.init) inherits this.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / "tests"), str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

SHARED_DATA = Path(os.environ.get("CTRAY_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """Path into ../shared/data; skips the calling test when the file is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole test session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        # Workers import stages and fake responders defined in tests/ modules.
        path = os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT)])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray


def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true", default=False,
                     help="also run the extended tier: multi-minute end-to-end runs whose "
                          "parts the default tier covers with smaller runs (outside CI's "
                          "30-minute budget on 2 cores)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--extended") or os.environ.get("CTRAY_EXTENDED_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="extended tier: python -m pytest --extended")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)
