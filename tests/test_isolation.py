"""The suite does not depend on the caller's environment and writes no data into the repository."""

import os
import subprocess
import sys

from conftest import DATA_ROOT
from detectron2.data import MetadataCatalog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_environment_is_clean_and_data_goes_to_a_temporary_folder():
    leaked = [k for k in os.environ if k.startswith("KD_DET2_") and k != "KD_DET2_DATASETS"]
    assert not leaked and "DETECTRON2_DATASETS" not in os.environ
    assert os.environ["KD_DET2_DATASETS"] == DATA_ROOT
    assert not os.path.abspath(DATA_ROOT).startswith(REPO + os.sep)
    for name in ("kd_shapes_train", "kd_shapes_mini_train", "kd_shapes_mini_val"):
        assert MetadataCatalog.get(name).json_file.startswith(DATA_ROOT), name


def test_caller_variables_do_not_reach_the_tests(tmp_path):
    env = dict(
        os.environ,
        KD_DET2_KEY_REGIONS_BACKEND="no-such-backend",
        KD_DET2_DATASETS=str(tmp_path / "elsewhere"),
        KD_DET2_BCCD=str(tmp_path / "no-bccd"),
        DETECTRON2_DATASETS=str(tmp_path / "d2"),
    )
    node = "tests/test_isolation.py::test_environment_is_clean_and_data_goes_to_a_temporary_folder"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", node, "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "d2").exists()
