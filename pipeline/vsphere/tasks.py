"""Waiting for vCenter tasks: poll ``task.info`` with backoff and a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pyVmomi import vim

from pipeline.vsphere.connection import VsphereError


class TaskFailedError(VsphereError):
    """A vCenter task ended in error; ``fault`` holds vCenter's fault object when known."""

    fault: Any = None


class TaskTimeoutError(VsphereError):
    """A vCenter task did not finish in time."""


def wait_for_task(
    task: vim.Task,
    what: str,
    timeout_s: float = 900.0,
    confirm: Callable[[], bool] | None = None,
) -> Any:
    """The task's result once it succeeds; ``TaskFailedError`` when it fails.

    ``confirm`` is a second way to tell the task is done, for servers whose ``TaskInfo`` cannot be
    deserialised (vcsim 0.24 puts a snapshot in ``TaskInfo.entity``); vCenter never needs it.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            info = task.info
        except TypeError:
            if confirm is not None and confirm():
                return None
            info = None
        if info is not None:
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                fault = info.error
                message = (getattr(fault, "msg", None) or type(fault).__name__) if fault else "unknown error"
                err = TaskFailedError(f"{what} failed in vCenter: {message}")
                err.fault = fault
                raise err
        if time.monotonic() > deadline:
            raise TaskTimeoutError(
                f"{what} did not finish within {timeout_s:.0f} s",
                "look at the task in the vSphere client; vCenter may be overloaded",
            )
        time.sleep(delay)
        delay = min(delay * 1.6, 2.0)
