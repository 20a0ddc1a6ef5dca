"""How ops spread work: a few Ray tasks when Ray is running, otherwise this process; and small
thread pools inside a task that stop at the first error and bound how much is read ahead.

This is the one ops module that imports Ray, so restore and verify stay plain functions over the
repository and can be tested (and used by the NBD server) without a cluster.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.errors import VmpumpError
from pipeline.ops.errors import OpsTaskError

T = TypeVar("T")
R = TypeVar("R")


def run_tasks(
    fn: Callable[..., R],
    calls: Sequence[tuple[Any, ...]],
    *,
    cpus: float = 1.0,
    on_this_node: bool = False,
    first_here: bool = False,
) -> list[R]:
    """``fn(*args)`` for every ``args`` in ``calls``: as Ray tasks if Ray is initialized, else here.

    ``on_this_node`` pins the tasks to the driver's node (they write a local file); ``first_here``
    runs the first call in this process meanwhile (the driver would only wait, and a Ray worker
    that has to start first costs about a second). The first failure cancels the other tasks and
    is raised as the ``VmpumpError`` the task raised.
    """
    if not calls:
        return []
    if not ray.is_initialized():
        return [fn(*args) for args in calls]
    if first_here:
        with ThreadPoolExecutor(1, thread_name_prefix="vmpump-ops-here") as pool:
            here = pool.submit(fn, *calls[0])
            try:
                rest = run_tasks(fn, calls[1:], cpus=cpus, on_this_node=on_this_node)
            finally:
                first = here.result()  # waits; an error here wins over the tasks' result
            return [first, *rest]
    options: dict[str, Any] = {"num_cpus": cpus, "max_retries": 0}
    if on_this_node:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    task = ray.remote(fn).options(**options)
    refs = [task.remote(*args) for args in calls]
    order = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            results[order[ready[0]]] = ray.get(ready[0])
        return results
    except ray.exceptions.RayError as e:
        for ref in pending:
            ray.cancel(ref, force=True)
        cause = getattr(e, "cause", None)
        if isinstance(cause, VmpumpError):
            raise cause from None
        raise OpsTaskError(f"a worker task failed: {cause or e}", "rerun with --debug for details") from e


def run_bounded(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """``fn`` over ``items`` on ``threads`` threads; the first error cancels what has not started."""
    return list(ordered_bounded(fn, items, threads))


def ordered_bounded(fn: Callable[[T], R], items: Sequence[T], threads: int) -> Iterator[R]:
    """Results in order, at most ``2 × threads`` computed ahead of the consumer (bounded memory)."""
    threads = max(1, threads)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="vmpump-ops")
    ahead: deque[Future[R]] = deque()
    position = 0
    try:
        while position < len(items) and len(ahead) < 2 * threads:
            ahead.append(pool.submit(fn, items[position]))
            position += 1
        while ahead:
            result = ahead.popleft().result()
            if position < len(items):
                ahead.append(pool.submit(fn, items[position]))
                position += 1
            yield result
    finally:
        for f in ahead:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
