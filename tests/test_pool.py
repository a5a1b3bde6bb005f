"""The CPU thread pool (src/cpp/cpu/pool.cpp): thread count and fork safety."""

import multiprocessing as mp

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
