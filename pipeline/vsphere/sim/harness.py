"""Start and script vmpump's vCenter simulator (vcsim + CBT, perf and Tools extensions).

For tests and the demo only; production code never imports this module. It imports nothing from
pyvmomi: the simulator is driven through its own small control API over HTTP.

    with VcsimHarness(hosts=3, datastores=2, vms=4, disk_mb=64) as sim:
        sim.write_disk("DC0_C0_RP0_VM0", 0, offset=0, data=b"x" * 65536)
        connect(sim.host, sim.port, sim.user, sim.password, protocol="http")

Each disk's change log (``<flat file>.changes.jsonl``) is JSON lines: ``{"extents": [[offset,
length], ...]}`` appended by ``write_disk``, ``{"changeId": "..."}`` appended by the simulator at
each snapshot of a CBT-enabled VM, ``{"reset": true}`` appended by ``reset_cbt``.

The Go sources ship beside this file (``*.go``, package ``main``) and are built once per machine
into ``~/.cache/vmpump/vcsim-<hash of the sources>`` with Debian's govmomi sources.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pipeline.errors import VmpumpError

GOVMOMI_SRC = Path("/usr/share/gocode/src/github.com/vmware/govmomi")
APT_HINT = "install them with: sudo apt-get install -y golang-go golang-github-vmware-govmomi-dev"
GO_SOURCES = sorted(Path(__file__).parent.glob("*.go"))
_BUILD_LOCK = threading.Lock()


class SimulatorError(VmpumpError):
    """The vCenter simulator could not be built or started."""


@dataclass(frozen=True)
class SimDisk:
    key: int
    file_name: str  # "[LocalDS_0] VM/disk1.vmdk"
    flat_path: Path  # the -flat.vmdk in the datastore directory
    capacity: int

    @property
    def change_log(self) -> Path:
        return Path(str(self.flat_path) + ".changes.jsonl")


def build_binary(cache_dir: Path | None = None) -> Path:
    """The simulator binary for this ``main.go``, built on first use (about 15 s)."""
    go = shutil.which("go")
    if go is None or not GOVMOMI_SRC.is_dir():
        raise SimulatorError("go or the govmomi sources are missing", APT_HINT)
    if not GO_SOURCES:
        raise SimulatorError(
            f"no Go sources beside {__file__}", "reinstall vmpump; the simulator ships as *.go"
        )
    hasher = hashlib.sha256()
    for source in GO_SOURCES:
        hasher.update(source.name.encode() + b"\0" + source.read_bytes())
    digest = hasher.hexdigest()[:16]
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vmpump"
    binary = cache / f"vcsim-{digest}"
    with _BUILD_LOCK:
        if binary.exists():
            return binary
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vmpump-gobuild-") as tmp:
            env = dict(
                os.environ,
                GO111MODULE="off",
                GOPATH=f"{tmp}:/usr/share/gocode",
                GOCACHE=str(cache / "gocache"),
                GOFLAGS="",
            )
            partial = cache / f".vcsim-{digest}.{os.getpid()}"
            done = subprocess.run(
                [go, "build", "-o", str(partial), *map(str, GO_SOURCES)],
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SimulatorError(
                    f"building the simulator failed: {done.stderr.strip()[-2000:]}", APT_HINT
                )
            partial.replace(binary)  # atomic: parallel sessions never run a half-written binary
    return binary


class VcsimHarness:
    """A running simulator and its control API; a context manager that always stops it."""

    user = "vmpump"
    password = "vmpump-pass"

    def __init__(
        self,
        hosts: int = 3,
        datastores: int = 2,
        vms: int = 4,
        disk_mb: int = 64,
        disks_per_vm: int = 1,
        cbt_page_bytes: int = 64 << 20,
        tls: bool = False,
    ) -> None:
        self._args = [
            f"-hosts={hosts}",
            f"-datastores={datastores}",
            f"-vms={vms}",
            f"-disk-mb={disk_mb}",
            f"-disks={disks_per_vm}",
            f"-cbt-page-bytes={cbt_page_bytes}",
            f"-user={self.user}",
            f"-password={self.password}",
            f"-tls={'true' if tls else 'false'}",
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.host = "127.0.0.1"
        self.port = 0
        self.protocol = "https" if tls else "http"
        self.datastore_dirs: dict[str, Path] = {}
        self.disks: dict[str, list[SimDisk]] = {}

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> VcsimHarness:
        binary = build_binary()
        self._proc = subprocess.Popen(
            [str(binary), *self._args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line:
            self.stop()
            raise SimulatorError("the simulator exited before printing its URL", "run it by hand to see why")
        parsed = urllib.parse.urlsplit(line)
        self.url, self.host, self.port = line, parsed.hostname or "127.0.0.1", parsed.port or 0
        info = self._control("info")
        self.datastore_dirs = {name: Path(p) for name, p in info["datastores"].items()}
        self.disks = {
            vm: [SimDisk(d["key"], d["file_name"], Path(d["flat_path"]), d["capacity"]) for d in disks]
            for vm, disks in info["vms"].items()
        }
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for d in self.datastore_dirs.values():
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> VcsimHarness:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # disks ---------------------------------------------------------------------------------
    def vm_names(self) -> list[str]:
        return sorted(self.disks)

    def disk(self, vm_name: str, disk_index: int = 0) -> SimDisk:
        return self.disks[vm_name][disk_index]

    def write_disk(self, vm_name: str, disk_index: int, offset: int, data: bytes) -> None:
        """Write guest data into the disk's flat file and log the change for CBT."""
        self.write_disk_many(vm_name, disk_index, [(offset, data)])

    def write_disk_many(self, vm_name: str, disk_index: int, writes: list[tuple[int, bytes]]) -> None:
        disk = self.disk(vm_name, disk_index)
        extents = []
        fd = os.open(disk.flat_path, os.O_WRONLY)
        try:
            for offset, data in writes:
                if offset < 0 or offset + len(data) > disk.capacity:
                    raise ValueError(f"write {offset}+{len(data)} beyond the disk ({disk.capacity} bytes)")
                os.pwrite(fd, data, offset)
                extents.append([offset, len(data)])
        finally:
            os.close(fd)
        self._append_log(disk, {"extents": extents})

    def reset_cbt(self, vm_name: str, disk_index: int = 0) -> None:
        """Invalidate every changeId issued so far for this disk (as a CBT reset does)."""
        self._append_log(self.disk(vm_name, disk_index), {"reset": True})

    def _append_log(self, disk: SimDisk, entry: dict[str, object]) -> None:
        with open(disk.change_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    # scripted behaviour --------------------------------------------------------------------
    def set_tools_running(self, vm_name: str, running: bool, guest_family: str = "linuxGuest") -> None:
        self._control("tools", vm=vm_name, running="1" if running else "0", family=guest_family)

    def set_quiesce_fails(self, vm_name: str, fails: bool) -> None:
        self._control("quiesce-fail", vm=vm_name, fail="1" if fails else "0")

    def set_latency(self, datastore: str, ms: int) -> None:
        self._control("latency", datastore=datastore, ms=str(int(ms)))

    def set_host_cpu(self, host: str, percent: float) -> None:
        self._control("host-cpu", host=host, hundredths=str(round(percent * 100)))

    def set_retrieve_page(self, objects: int | None) -> None:
        """Make the PropertyCollector answer in pages of ``objects`` with a token; None: one page."""
        self._control("retrieve-page", objects=str(objects or 0))

    def make_cbt_lie(self, mode: str | None) -> None:
        """Make QueryChangedDiskAreas lie: gap, overlap, stall, omit, outside; None to stop."""
        if mode not in (None, "gap", "overlap", "stall", "omit", "outside"):
            raise ValueError(f"unknown CBT lie {mode!r}")
        self._control("cbt-lie", mode=mode or "")

    def _control(self, what: str, **params: str) -> dict:
        scheme = "http"  # the control API rides on the same listener; with TLS it is https
        if self.protocol == "https":
            scheme = "https"
        query = urllib.parse.urlencode(params)
        url = f"{scheme}://{self.host}:{self.port}/vmpump/{what}" + (f"?{query}" if query else "")
        context = None
        if scheme == "https":
            import ssl

            context = ssl._create_unverified_context()  # the simulator's self-signed certificate
        with urllib.request.urlopen(url, timeout=10, context=context) as resp:
            body = resp.read()
        return json.loads(body) if body else {}
