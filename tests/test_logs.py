import os
import subprocess
import sys

from rlstack.config import parse_recipe
from rlstack.logs import LOG_DIR_ENV, LogWatcher
from rlstack.tracking import Tracker

TCMALLOC = "WARNING 12-01 10:46:18 [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD. For best performance\n"


def test_console_true_and_false_still_mean_quiet_and_off():
    assert parse_recipe({"tracking": {"console": True}}).tracking.console == "quiet"
    assert parse_recipe({"tracking": {"console": False}}).tracking.console == "off"
    assert parse_recipe({}).tracking.console == "quiet"
    assert parse_recipe({"tracking": {"console": "verbose"}}).tracking.console == "verbose"


def test_an_actor_sends_python_and_c_output_to_the_first_free_log_of_its_role(tmp_path):
    (tmp_path / "reward-0.log").write_text("an earlier actor's\n")
    child = (
        "import os, sys\n"
        "from rlstack.logs import capture_output\n"
        "capture_output('reward')\n"
        "print('from python')\n"
        "sys.stdout.flush()\n"
        "os.write(2, b'from a C library\\n')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child], env={**os.environ, LOG_DIR_ENV: str(tmp_path)}, capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == "" and out.stderr == ""
    assert (tmp_path / "reward-1.log").read_text() == "from python\nfrom a C library\n"
    assert (tmp_path / "reward-0.log").read_text() == "an earlier actor's\n"


def test_without_a_log_directory_an_actor_keeps_its_output():
    child = "from rlstack.logs import capture_output\ncapture_output('reward')\nprint('still here')\n"
    env = {key: value for key, value in os.environ.items() if key != LOG_DIR_ENV}
    assert (
        subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True).stdout == "still here\n"
    )


def test_a_notable_library_line_is_named_once_and_only_when_whole(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "rollout-0.log"
    log.write_text(TCMALLOC[:60])
    watcher = LogWatcher(tmp_path)
    assert watcher.new_findings() == []
    with log.open("a") as file:
        file.write(TCMALLOC[60:] + TCMALLOC)
    [finding] = watcher.new_findings()
    assert finding.startswith("vLLM runs without tcmalloc") and finding.endswith("(logs/rollout-0.log)")
    assert watcher.new_findings() == []


def test_a_quiet_console_says_which_rewards_failed_and_what_the_engine_logged(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rollout-0.log").write_text(TCMALLOC)
    recipe = parse_recipe({"tracking": {"wandb": "disabled"}})
    tracker = Tracker(recipe, tmp_path, total_steps=1)
    tracker.log(1, {"reward/mean": 0.5, "reward/errors": 3, "reward/exact_match/errors": 3, "reward/length/errors": 0})
    tracker.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 1  reward/mean=0.5"
    assert lines[1] == (
        "warning: reward calls failed (exact_match 3) and scored reward.error_score; the first traceback of each "
        "kind: logs/driver.log"
    )
    assert lines[2].startswith("warning: vLLM runs without tcmalloc/libiomp preloaded")
