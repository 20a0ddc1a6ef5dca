"""An estate to plan for: VMs with their disks, hosts and datastores, and how fast they change.

An estate comes from a YAML file, either listed VM by VM or as a generator spec (counts and
distributions with a seed, so a 5,000-VM what-if stays a 20-line file and always the same estate),
or from an inventory read from vCenter.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

MiB = 2**20
_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50}
_UNITS.update({"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15})


class EstateError(ConfigError):
    """An estate file or inventory that cannot be planned for."""


@dataclass(frozen=True)
class DiskSpec:
    size_bytes: int
    datastore: str


@dataclass(frozen=True)
class VmSpec:
    name: str
    host: str
    disks: tuple[DiskSpec, ...]
    change_rate: float  # share of the VM's bytes that change between two nightly backups

    @property
    def size_bytes(self) -> int:
        return sum(d.size_bytes for d in self.disks)


@dataclass(frozen=True)
class Estate:
    vms: tuple[VmSpec, ...]
    datastore_mib_s: Mapping[str, float]  # read throughput per datastore; absent: not limiting

    @property
    def total_bytes(self) -> int:
        return sum(vm.size_bytes for vm in self.vms)

    @property
    def changed_bytes(self) -> float:
        return sum(vm.size_bytes * vm.change_rate for vm in self.vms)

    @property
    def change_rate(self) -> float:
        """The estate's change rate, weighted by size."""
        return self.changed_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def hosts(self) -> set[str]:
        return {vm.host for vm in self.vms}

    @property
    def datastores(self) -> set[str]:
        return {d.datastore for vm in self.vms for d in vm.disks}

    @property
    def disk_count(self) -> int:
        return sum(len(vm.disks) for vm in self.vms)


def parse_size(value: Any, what: str) -> int:
    """``"100GiB"``, ``"1.5 TiB"``, ``"400MB"`` or a number of bytes."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGTP]?I?B?)\s*(/S)?\s*", str(value).upper())
    if not match or match.group(2) not in _UNITS:
        raise EstateError(f"{what}: {value!r} is not a size", "write it like 100GiB, 1.5TiB or 400MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def load_estate(path: str | Path) -> Estate:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise EstateError(f"estate file {path} does not exist", "give the path to an estate YAML") from e
    except yaml.YAMLError as e:
        raise EstateError(f"estate file {path} is not valid YAML: {e}", "check the indentation") from e
    return estate_from_dict(doc, str(path))


def estate_from_dict(doc: Any, where: str = "estate") -> Estate:
    if not isinstance(doc, dict) or not ({"vms", "generate"} & set(doc)):
        raise EstateError(
            f"{where} has neither 'vms' nor 'generate'", "list the VMs, or give a generator spec"
        )
    if "generate" in doc:
        return generate_estate(doc["generate"], where)
    throughput = {
        str(ds["name"]): parse_size(ds["throughput"], f"{where}: datastore {ds['name']}") / MiB
        for ds in doc.get("datastores", [])
        if "throughput" in ds
    }
    vms = []
    for i, vm in enumerate(doc["vms"]):
        try:
            disks = tuple(
                DiskSpec(parse_size(d["size"], f"{where}: VM {vm['name']}"), str(d["datastore"]))
                for d in vm["disks"]
            )
            vms.append(VmSpec(str(vm["name"]), str(vm["host"]), disks, float(vm.get("change_rate", 0.05))))
        except (KeyError, TypeError) as e:
            raise EstateError(
                f"{where}: VM #{i + 1} lacks {e}", "each VM needs name, host and disks (size, datastore)"
            ) from e
    return _checked(Estate(tuple(vms), throughput), where)


def _weighted(rng: random.Random, table: Mapping[Any, float], what: str) -> Any:
    if not table or any(w < 0 for w in table.values()) or sum(table.values()) <= 0:
        raise EstateError(f"{what}: weights {dict(table)} are not a distribution", "give positive weights")
    return rng.choices(list(table), weights=list(table.values()))[0]


def generate_estate(spec: Mapping[str, Any], where: str = "estate") -> Estate:
    """A deterministic estate from counts and distributions (see ``configs/estate-5000.yaml``)."""
    try:
        rng = random.Random(int(spec.get("seed", 0)))
        n_vms, n_hosts, n_ds = int(spec["vms"]), int(spec["hosts"]), int(spec["datastores"])
        total = parse_size(spec["total"], f"{where}: generate.total")
        disks_per_vm = {int(k): float(v) for k, v in spec.get("disks_per_vm", {1: 1.0}).items()}
        change_rate = {float(k): float(v) for k, v in spec.get("change_rate", {0.05: 1.0}).items()}
        median = parse_size(spec.get("disk_median", "64GiB"), f"{where}: generate.disk_median")
        sigma = float(spec.get("disk_sigma", 1.0))
        same_datastore = float(spec.get("same_datastore_share", 0.8))
        ds_mib_s = spec.get("datastore_throughput")
    except KeyError as e:
        raise EstateError(f"{where}: generate lacks {e}", "give vms, hosts, datastores and total") from e
    if min(n_vms, n_hosts, n_ds) < 1 or total < n_vms:
        raise EstateError(
            f"{where}: generate asks for an empty estate", "vms, hosts, datastores must be >= 1"
        )
    hosts = [f"esx-{i:03d}" for i in range(n_hosts)]
    datastores = [f"ds-{i:03d}" for i in range(n_ds)]
    drafts = []
    for i in range(n_vms):
        home = datastores[i % n_ds]
        count = _weighted(rng, disks_per_vm, f"{where}: disks_per_vm")
        placed = [
            home if j == 0 or rng.random() < same_datastore else rng.choice(datastores) for j in range(count)
        ]
        sizes = [rng.lognormvariate(math.log(median), sigma) for _ in placed]
        drafts.append((f"vm-{i:05d}", hosts[i % n_hosts], placed, sizes, _weighted(rng, change_rate, where)))
    scale = total / sum(s for *_, sizes, _ in drafts for s in sizes)  # hit the stated total exactly
    vms = tuple(
        VmSpec(
            name,
            host,
            tuple(
                DiskSpec(max(MiB, int(s * scale) // MiB * MiB), ds)
                for ds, s in zip(placed, sizes, strict=True)
            ),
            cr,
        )
        for name, host, placed, sizes, cr in drafts
    )
    throughput = {} if ds_mib_s is None else {ds: parse_size(ds_mib_s, where) / MiB for ds in datastores}
    return _checked(Estate(vms, throughput), where)


def estate_from_inventory(vms: Iterable[Any], change_rate: float = 0.05) -> Estate:
    """From inventory records with ``name``, ``host`` and ``disks`` of (``capacity_bytes``, ``datastore``)."""
    specs = tuple(
        VmSpec(
            vm.name,
            vm.host,
            tuple(DiskSpec(int(d.capacity_bytes), str(d.datastore)) for d in vm.disks),
            float(getattr(vm, "change_rate", change_rate)),
        )
        for vm in vms
    )
    return _checked(Estate(specs, {}), "inventory")


def _checked(estate: Estate, where: str) -> Estate:
    if not estate.vms:
        raise EstateError(f"{where} has no VMs", "an estate to plan for needs at least one VM")
    for vm in estate.vms:
        if not vm.disks:
            raise EstateError(f"{where}: VM {vm.name} has no disks", "give every VM at least one disk")
        if not 0 <= vm.change_rate <= 1:
            raise EstateError(f"{where}: VM {vm.name} change rate {vm.change_rate}", "a share from 0 to 1")
    return estate
