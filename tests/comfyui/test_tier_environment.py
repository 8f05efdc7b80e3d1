"""The real-ComfyUI tier waits for the environment `.ci/run` builds beside the suite (COMFYUI_ENV_READY)."""

import threading
import time

import pytest

from comfyui_host import wait_for_environment


def test_without_a_status_file_to_wait_for_the_tier_goes_ahead():
    wait_for_environment(None)


def test_the_tier_waits_until_the_build_writes_its_status(tmp_path):
    status = tmp_path / "env.status"
    writer = threading.Timer(1.0, status.write_text, args=("0\n",))
    writer.start()
    started = time.monotonic()
    wait_for_environment(str(status), timeout=60)
    assert status.exists() and time.monotonic() - started >= 0.9
    writer.join()


def test_a_failed_build_fails_the_tier_with_its_log(tmp_path):
    (tmp_path / "env.log").write_text("pip: no matching distribution for torch==9\n")
    (tmp_path / "env.status").write_text("1\n")
    with pytest.raises(pytest.fail.Exception, match=r"exit status 1\)(.|\n)*torch==9"):
        wait_for_environment(str(tmp_path / "env.status"))


def test_a_build_that_never_ends_fails_the_tier_at_its_deadline(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="was not built in 1 s"):
        wait_for_environment(str(tmp_path / "env.status"), timeout=1)
