"""Range-read throughput from the vCenter simulator: datastore HTTP vs direct file.

    /work/main/.venv/bin/python bench/vsphere_read.py [--disk-mb 256] [--read-mb 8] [--threads 1 4]

Writes random data over the whole disk (so nothing is a hole), takes a snapshot, then reads the
disk end to end through each transport and prints MiB/s. Loopback only: this measures the client
and vcsim's /folder handler, not a real datastore.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from pipeline.source.vsphere import TransportOptions, open_vsphere_source, snapshot_disks
from pipeline.vsphere.connection import VsphereEndpoint, connect
from pipeline.vsphere.inventory import load_inventory
from pipeline.vsphere.sim import VcsimHarness
from pipeline.vsphere.snapshots import backup_snapshot

MiB = 1 << 20


def read_all(source, read_bytes: int, threads: int) -> float:
    offsets = range(0, source.capacity, read_bytes)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(
            pool.map(lambda off: len(source.read(off, min(read_bytes, source.capacity - off))), offsets)
        )
    elapsed = time.perf_counter() - start
    assert total == source.capacity
    return total / MiB / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--disk-mb", type=int, default=256)
    parser.add_argument("--read-mb", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with VcsimHarness(vms=1, disk_mb=args.disk_mb) as sim:
        vm_name = sim.vm_names()[0]
        for off in range(0, args.disk_mb * MiB, 16 * MiB):
            sim.write_disk(vm_name, 0, off, os.urandom(16 * MiB))
        endpoint = VsphereEndpoint(sim.host, sim.user, sim.password, port=sim.port, protocol=sim.protocol)
        with connect(endpoint) as conn:
            vm = load_inventory(conn).vm(vm_name)
            with backup_snapshot(conn, vm.moref, run_id="bench", job="bench") as snap:
                (disk,) = snapshot_disks(snap, vm.datacenter)
                options = TransportOptions(
                    datastore_mounts={k: str(v) for k, v in sim.datastore_dirs.items()}
                )
                for transport in ("http", "file"):
                    source = open_vsphere_source(conn, disk, transport, options)
                    try:
                        for threads in args.threads:
                            rates = [
                                read_all(source, args.read_mb * MiB, threads) for _ in range(args.rounds)
                            ]
                            print(
                                f"{transport:5s} disk={args.disk_mb} MiB read={args.read_mb} MiB "
                                f"threads={threads}: best {max(rates):7.0f} MiB/s, median "
                                f"{sorted(rates)[len(rates) // 2]:7.0f} MiB/s"
                            )
                    finally:
                        source.close()


if __name__ == "__main__":
    main()
