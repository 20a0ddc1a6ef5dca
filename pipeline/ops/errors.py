"""Errors of the operations room (restore, verify, instant access, drills)."""

from __future__ import annotations

from pipeline.errors import VmpumpError


class RestoreError(VmpumpError):
    """A restore could not run or did not finish; nothing that looks complete was left behind."""


class RestoreTargetError(RestoreError):
    """The restore target (a file, a datastore URL) refused the data."""


class VerifyFailedError(VmpumpError):
    """Verify found damaged or missing data; the message names the restore points it damages."""

    exit_code = 3


class InstantAccessError(VmpumpError):
    """The NBD export could not be served."""


class OpsTaskError(VmpumpError):
    """A worker task of restore or verify died for a reason that is not a vmpump error."""
