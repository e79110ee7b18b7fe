"""Shared test settings (hypothesis profiles sized for a 2-core CI machine) and fixtures."""

import os
import subprocess

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def make_tmpfs(tmp_path):
    """``make_tmpfs(size_mib, inodes=None)``: a small tmpfs of the test's own (filling it fills nobody
    else's disk; ``inodes`` caps its files and directories); skips the test where mounting is not
    allowed, unmounts at the end."""
    mounted = []

    def make(size_mib: int, inodes: int | None = None):
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        options = f"size={size_mib}m,mode=0755" + (f",nr_inodes={inodes}" if inodes else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
