import io
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from rlstack.demo import MARK_ENV, DemoMemory, job_lines, role, stop, with_descendants

RAY_JOB_LOGS = """\
2026-12-01 10:46:00,590\tINFO cli.py:42 -- Job submission server address: http://127.0.0.1:8265
2026-12-01 10:46:02,305\tINFO job_manager.py:581 -- Runtime env is setting up.
Running entrypoint for job demo-1: python -m rlstack.train recipes/grpo_arith_smollm2.yaml
grpo-arith-smollm2: grpo on smollm2, 12 steps on cpu
step 1  reward/mean=0.188
"""
STILL_RUNNING = "2026-12-01 10:50:11,576\tINFO cli.py:92 -- Status for job 'demo-1': RUNNING\n"
RAY_JOB_LOGS_AGAIN = (
    RAY_JOB_LOGS
    + """\
step 2  reward/mean=0.344
{"summary": {"steps": 12}}
2026-12-01 10:58:02,312\tSUCC cli.py:66 -- Job 'demo-1' succeeded
"""
)


def test_the_demo_shows_the_jobs_own_lines_once_and_logs_all_of_rays(capsys):
    log = io.StringIO()
    shown, status = job_lines(io.StringIO(RAY_JOB_LOGS + STILL_RUNNING), log, skip=0)
    assert (shown, status) == (2, STILL_RUNNING)
    shown, status = job_lines(io.StringIO(RAY_JOB_LOGS_AGAIN), log, skip=shown)  # Ray closed the stream early
    assert shown == 4 and "succeeded" in status
    assert capsys.readouterr().out.splitlines() == [
        "grpo-arith-smollm2: grpo on smollm2, 12 steps on cpu",
        "step 1  reward/mean=0.188",
        "step 2  reward/mean=0.344",
        '{"summary": {"steps": 12}}',
    ]
    assert log.getvalue() == RAY_JOB_LOGS + STILL_RUNNING + RAY_JOB_LOGS_AGAIN


def test_verbose_the_demo_shows_rays_lines_too(capsys):
    job_lines(io.StringIO(RAY_JOB_LOGS_AGAIN), None, skip=0)
    assert capsys.readouterr().out == RAY_JOB_LOGS_AGAIN


def test_process_kinds_name_the_actor_not_its_current_method():
    assert role(["ray::TrainerWorker.step"]) == "ray::TrainerWorker"
    assert role(["python", "-m", "rlstack.train", "recipes/grpo_arith_smollm2.yaml"]) == "driver"
    assert role(["python", "-m", "ray.scripts.scripts", "job", "submit", "--", "python", "-m", "rlstack.train"]) == (
        "ray job submit"
    )
    assert role(["ray-dashboard-JobHead-0", "(/usr/bin/python", "-c", "...)"]) == "dashboard"


def test_demo_memory_counts_the_marked_processes_and_everything_below_them():
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 20: 1, 21: 20}  # 10 marked; its grandchild 12 lost its environment
    assert with_descendants({10}, parents) == {10, 11, 12}


def test_demo_memory_samples_a_marked_process():
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], env={**os.environ, MARK_ENV: "t"})
    try:
        memory = DemoMemory("t")
        total = memory.sample()
        assert total > 0 and memory.parts == {Path(sys.executable).name: total}  # the first sample is the peak so far
    finally:
        marked.kill()


def test_stopping_the_demo_ends_its_processes_and_their_children_only():
    sleep = "import time; time.sleep(60)"
    child = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {sleep!r}]); {sleep}"
    marked = subprocess.Popen([sys.executable, "-c", child], env={**os.environ, MARK_ENV: "stop-test"})
    other = subprocess.Popen([sys.executable, "-c", sleep])
    try:
        for _ in range(100):
            children = psutil.Process(marked.pid).children()
            if children:
                break
            time.sleep(0.05)
        stop("stop-test", grace_s=5)
        assert marked.wait(timeout=5) is not None
        assert not children[0].is_running() and other.poll() is None
    finally:
        other.kill()
