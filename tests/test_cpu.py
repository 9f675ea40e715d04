"""Thread policy for concurrent jobs (echochamber.cpu): what the CLI sets before torch loads."""

import os
import subprocess
import sys

import pytest

from echochamber.cpu import thread_settings


def test_jobs_split_the_cores_and_sleep_when_idle():
    assert thread_settings({}, 8) == {"OMP_NUM_THREADS": "8"}  # one job: all cores, OpenMP's own wait policy
    assert thread_settings({"ECHOCHAMBER_JOBS": "2"}, 8) == {"OMP_NUM_THREADS": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    assert thread_settings({"ECHOCHAMBER_JOBS": "3"}, 2)["OMP_NUM_THREADS"] == "1"  # never 0 threads
    assert thread_settings({"ECHOCHAMBER_JOBS": "2", "ECHOCHAMBER_THREADS": "3"}, 8)["OMP_NUM_THREADS"] == "3"


def test_settings_already_made_are_kept():
    env = {"ECHOCHAMBER_JOBS": "2", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}  # e.g. torchrun's
    assert thread_settings(env, 8) == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_values_name_the_variable(bad):
    with pytest.raises(ValueError, match=f"ECHOCHAMBER_JOBS={bad!r}"):
        thread_settings({"ECHOCHAMBER_JOBS": bad}, 2)


def test_cli_configures_threads_before_torch_loads():
    code = ("import os, sys\n"
            "from echochamber.cli import main\n"
            "assert 'torch' not in sys.modules\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import torch\n"
            "print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "ECHOCHAMBER_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ECHOCHAMBER_JOBS": str(len(os.sched_getaffinity(0)))},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1].split() == ["1", "PASSIVE"]  # after the --help text


# ----------------------------------------------------------------------------- jobs nobody announced

_HOLDER = ("import sys\nfrom echochamber.cpu import JobRegistry\n"
           "JobRegistry(sys.argv[1]).join()\nprint('ready', flush=True)\nsys.stdin.read()\n")


def _start_job(directory) -> subprocess.Popen:
    """Another echochamber job: a process holding its registry file until its stdin closes (or it is killed)."""
    job = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "ready"
    return job


def test_registry_counts_live_jobs_and_forgets_killed_ones(tmp_path):
    from echochamber.cpu import JobRegistry

    me = JobRegistry(tmp_path)
    me.join()
    assert me.count() == 1
    ended, killed = _start_job(tmp_path), _start_job(tmp_path)
    assert me.count() == 3
    ended.communicate("")  # exits normally
    killed.kill()  # no cleanup of its own: the kernel drops its lock
    killed.wait()
    assert me.count() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}.lock"]  # the dead jobs' files are gone
    me.leave()
    assert list(tmp_path.iterdir()) == []


def test_cli_splits_the_cores_with_jobs_it_finds(tmp_path):
    code = ("import sys\n"
            "from echochamber.cpu import configure, rebalance\n"
            "assert configure() == {}\n"  # automatic: no environment settings
            "import torch\n"
            "print(rebalance(force=True), flush=True)\n"  # alone
            "sys.stdin.readline()\n"
            "print(rebalance(force=True), torch.get_num_threads(), flush=True)\n")  # another job started meanwhile
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "ECHOCHAMBER_"))}
    job = subprocess.Popen([sys.executable, "-c", code], env={**env, "ECHOCHAMBER_JOBS_DIR": str(tmp_path)},
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cores = len(os.sched_getaffinity(0))
    assert int(job.stdout.readline()) == cores
    other = _start_job(tmp_path / f"echochamber-jobs-{os.getuid()}")
    out, _ = job.communicate("go\n")
    other.communicate("")
    assert out.split() == [str(max(1, cores // 2))] * 2


def test_a_finished_command_stops_counting_as_a_job(tmp_path):
    code = ("import os, sys\n"
            "from echochamber.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.listdir(sys.argv[1]))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "ECHOCHAMBER_"))}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"echochamber-jobs-{os.getuid()}")],
                         env={**env, "ECHOCHAMBER_JOBS_DIR": str(tmp_path)}, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"  # joined while the command ran (the folder exists), left after


def test_an_unwritable_registry_runs_the_job_alone(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")  # the registry folder would have to live inside a file
    code = ("from echochamber.cpu import configure, rebalance\n"
            "import torch\n"
            "print(configure(), rebalance(force=True))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "ECHOCHAMBER_"))}
    run = subprocess.run([sys.executable, "-c", code], env={**env, "ECHOCHAMBER_JOBS_DIR": str(blocker)},
                         capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["{}", "None"] and "jobs registry" in run.stderr


def test_a_thread_count_the_config_pins_is_not_rebalanced(tmp_path):
    """rl.threads=1 in automatic mode ran its later steps at cores // jobs threads: rebalance took over at the next
    step. Pinned, rebalance leaves it; pinned to 0 (the configs' default), the automatic split is back."""
    code = ("from echochamber.cpu import configure, pin_threads, rebalance\n"
            "configure()\n"
            "import torch\n"
            "pin_threads(1)\n"
            "print(rebalance(force=True), torch.get_num_threads())\n"
            "pin_threads(0)\n"
            "print(rebalance(force=True), torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "ECHOCHAMBER_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ECHOCHAMBER_JOBS_DIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.split()
    cores = len(os.sched_getaffinity(0))
    assert out == ["None", "1", str(cores), str(cores)]
