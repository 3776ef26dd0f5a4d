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
