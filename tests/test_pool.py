"""The CPU thread pool (src/cpp/cpu/pool.cpp): thread count and fork safety."""

import multiprocessing as mp
import subprocess
import sys
import time

import numpy as np

import fastopt


def _step_in_child(queue) -> None:
    params = [np.ones(1 << 20, np.float32)]
    grads = [np.ones(1 << 20, np.float32)]
    opt = fastopt.SGD(params, grads, lr=0.5)  # large enough to use every thread
    opt.step()
    queue.put((float(params[0][0]), fastopt.get_num_threads()))


def test_step_in_forked_child_does_not_hang():
    # The parent's pool has worker threads; a forked child inherits the pool but not them.
    fastopt.set_num_threads(2)
    warm = fastopt.SGD([np.ones(1 << 20, np.float32)], [np.ones(1 << 20, np.float32)], lr=1.0)
    warm.step()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_step_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "a step in a forked child hung"
    assert child.exitcode == 0
    assert queue.get(timeout=5) == (0.5, 2)


def test_set_num_threads_round_trip():
    before = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(1)
        assert fastopt.get_num_threads() == 1
        fastopt.set_num_threads(3)
        assert fastopt.get_num_threads() == 3
    finally:
        fastopt.set_num_threads(before)


def test_set_num_threads_rejects_zero():
    try:
        fastopt.set_num_threads(0)
    except ValueError as e:
        assert "num_threads" in str(e)
    else:
        raise AssertionError("set_num_threads(0) was accepted")


def _run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


def test_resizing_between_steps_never_loses_a_step():
    # New workers must wait for the next job, not replay the previous one: a replay
    # double-counted the job's workers and hung or returned early (seen after ~900 rounds).
    proc = _run_python("""
import numpy as np, fastopt
p, g = np.zeros(1 << 17, np.float32), np.ones(1 << 17, np.float32)
opt = fastopt.SGD([p], [g], lr=1.0)
for i in range(3000):
    fastopt.set_num_threads(3 + i % 2)
    opt.step()
assert (p == -3000).all(), p[:4]
print("ok")
""")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_forked_child_resized_before_its_first_step():
    # In a forked child, set_num_threads then a step must give exactly n - 1 workers.
    proc = _run_python("""
import os, numpy as np, fastopt
opt = fastopt.SGD([np.zeros(1 << 20, np.float32)], [np.ones(1 << 20, np.float32)], lr=1.0)
opt.step()
pid = os.fork()
if pid == 0:
    fastopt.set_num_threads(3)
    opt.step()
    with_three = len(os.listdir("/proc/self/task"))
    fastopt.set_num_threads(1)
    opt.step()
    with_one = len(os.listdir("/proc/self/task"))
    os._exit(0 if with_three - with_one == 2 else 1)
_, status = os.waitpid(pid, 0)
print("ok" if os.waitstatus_to_exitcode(status) == 0 else "wrong worker count")
""")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.stdout, proc.stderr)


def test_regions_run_every_task_once_whether_workers_spin_or_sleep():
    # Each step subtracts exactly 1 from every element: a task run twice, or lost, shows. The
    # pauses put the worker in every state the caller may find it in: spinning (no pause),
    # about to sleep (around ThreadPool::kSpinNs, 100 us), asleep (1 ms): a worker that wakes
    # after the caller closed the region must run nothing of it.
    before = fastopt.get_num_threads()
    try:
        for threads in (2, 3):
            fastopt.set_num_threads(threads)
            for n in ((1 << 16) + 7, 196608, 5 * (1 << 16) + 3):
                p, g = np.zeros(n, np.float32), np.ones(n, np.float32)
                opt = fastopt.SGD([p], [g], lr=1.0)
                assert opt._core.num_tasks >= 2
                pauses = (0.0, 5e-5, 1e-4, 2e-4, 1e-3)
                for i in range(100):
                    time.sleep(pauses[i % len(pauses)])
                    opt.step()
                assert (p == -100).all(), (threads, n, np.unique(p))
    finally:
        fastopt.set_num_threads(before)


def test_update_tasks_balance_the_threads():
    # A one-pass step's tasks are about a quarter of a thread's share (at least 32768 elements,
    # at most a super-block of 131072): 196608 elements were one task of 131072 and one of
    # 65536, and one thread did two thirds of the work. Fewer than 65536 run on the caller.
    before = fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(2)
        tasks = {n: fastopt.SGD([np.zeros(n, np.float32)], [np.ones(n, np.float32)], lr=1.0)._core.num_tasks
                 for n in (1000, 65535, 65536, 196608, 1 << 20, 1 << 22)}
        assert tasks == {1000: 1, 65535: 1, 65536: 2, 196608: 6, 1 << 20: 8, 1 << 22: 32}, tasks
        fastopt.set_num_threads(1)
        assert fastopt.SGD([np.zeros(1 << 20, np.float32)], [np.ones(1 << 20, np.float32)], lr=1.0)._core.num_tasks == 8
    finally:
        fastopt.set_num_threads(before)


def test_a_child_forked_while_another_thread_steps_can_step():
    # The fork may land while a parent worker is inside a region: the child has no such worker,
    # and its first region must not wait for it (it did, forever: 6 children of 20 hung).
    proc = _run_python("""
import os, signal, threading, time, numpy as np, fastopt
fastopt.set_num_threads(2)
bg = fastopt.SGD([np.zeros(1 << 21, np.float32)], [np.ones(1 << 21, np.float32)], lr=1e-6)
stop = False
def stepper():
    while not stop:
        bg.step()
t = threading.Thread(target=stepper)
t.start()
bad = 0
for i in range(20):
    time.sleep(0.003 * (i % 5))
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # (a hung step dies of SIGALRM)
        p = np.zeros(5 * 65536 + 3, np.float32)
        fastopt.SGD([p], [np.ones_like(p)], lr=1.0).step()
        os._exit(0 if (p == -1).all() else 3)
    _, status = os.waitpid(pid, 0)
    bad += os.waitstatus_to_exitcode(status) != 0
stop = True
t.join()
print("ok" if bad == 0 else f"{bad} of 20 children failed")
""")
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.stdout, proc.stderr)
