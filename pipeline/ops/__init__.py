"""Restore, verify, instant access and restore drills (prune and garbage collection to come).

- ``select``: which restore point and disk a command means (``latest``, id prefix, ``as_of``);
- ``restore``: ``restore_disk`` (a file or an HTTP PUT target), ``restore_vm`` (a directory);
- ``targets``: the ``RestoreTarget`` seam: ``FileTarget``, ``HttpPutTarget``;
- ``reader``: planned, coalesced, verified chunk reads; ``DiskImageReader`` for random access;
- ``verify``: ``verify_repository`` quick or full; ``damaged``: the ``damaged/`` markers;
- ``nbd``: ``NbdServer`` and ``point_exports`` (instant, read-only access);
- ``drill``: ``run_drill`` records measured restore times in ``reports/drill-*.parquet``;
- ``parallel``: the one ops module that imports Ray.
"""
