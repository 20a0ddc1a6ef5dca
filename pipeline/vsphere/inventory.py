"""The vCenter inventory as plain frozen data: VMs with disks and snapshots, hosts, datastores.

One PropertyCollector query per object type (ContainerView + TraversalSpec), followed through
``ContinueRetrievePropertiesEx`` while vCenter hands back a token, so the number of SOAP round trips
does not grow with the number of VMs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pyVmomi import vim, vmodl

from pipeline.vsphere.connection import Connection, VsphereError

# Objects per page; vCenter may cap it lower and hands back a token for the rest.
PAGE_OBJECTS = 500


class InventoryError(VsphereError):
    """The inventory does not contain what was asked for."""


@dataclass(frozen=True)
class DiskInfo:
    key: int  # device key, stable for the VM's life (vCenter numbers disks 2000, 2001, ...)
    label: str
    capacity: int  # bytes
    file_name: str  # "[datastore] dir/disk.vmdk"
    datastore: str  # datastore name
    change_id: str | None  # opaque CBT marker of the current state; never parse it
    parent_file: str | None = None  # the backing's parent: this state is a delta on an older one


@dataclass(frozen=True)
class SnapshotInfo:
    moref: str
    name: str
    description: str
    create_time: datetime | None
    quiesced: bool


@dataclass(frozen=True)
class VmInfo:
    moref: str
    name: str
    datacenter: str
    host: str  # host name
    power_state: str
    tools_running: bool
    tools_running_status: str
    tools_version_status: str
    guest_family: str
    guest_id: str
    cbt_enabled: bool
    disks: tuple[DiskInfo, ...]
    snapshots: tuple[SnapshotInfo, ...]


@dataclass(frozen=True)
class HostInfo:
    moref: str
    name: str
    datastores: tuple[str, ...]  # names
    connection_state: str


@dataclass(frozen=True)
class DatastoreInfo:
    moref: str
    name: str
    url: str
    free_space: int
    capacity: int
    datacenter: str
    type: str


@dataclass(frozen=True)
class Inventory:
    vms: tuple[VmInfo, ...]
    hosts: tuple[HostInfo, ...]
    datastores: tuple[DatastoreInfo, ...]

    def vm(self, name: str) -> VmInfo:
        for vm in self.vms:
            if vm.name == name:
                return vm
        raise InventoryError(
            f"no VM named {name!r} in vCenter", "check the VM name (names are case-sensitive)"
        )

    def datastore(self, name: str) -> DatastoreInfo:
        for ds in self.datastores:
            if ds.name == name:
                return ds
        raise InventoryError(f"no datastore named {name!r} in vCenter", "check the datastore name")


def retrieve(conn: Connection, obj_type: type, paths: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(managed object, {path: value}) for every object of ``obj_type``, all pages followed."""
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [obj_type], True)
    try:
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[
                pc.ObjectSpec(
                    obj=view,
                    skip=True,
                    selectSet=[
                        pc.TraversalSpec(name="view", path="view", skip=False, type=vim.view.ContainerView)
                    ],
                )
            ],
            propSet=[pc.PropertySpec(type=obj_type, pathSet=paths, all=False)],
        )
        collector = content.propertyCollector
        result = collector.RetrievePropertiesEx([spec], pc.RetrieveOptions(maxObjects=PAGE_OBJECTS))
        while result is not None:
            for obj in result.objects:
                yield obj.obj, {p.name: p.val for p in obj.propSet or []}
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(result.token)
    finally:
        view.DestroyView()


def list_datastores(conn: Connection) -> list[DatastoreInfo]:
    dc_of: dict[str, str] = {}
    for _dc, props in retrieve(conn, vim.Datacenter, ["name", "datastore"]):
        for ds in props.get("datastore") or []:
            dc_of[ds._moId] = props["name"]
    out = []
    paths = ["name", "summary.url", "summary.freeSpace", "summary.capacity", "summary.type"]
    for ds, props in retrieve(conn, vim.Datastore, paths):
        out.append(
            DatastoreInfo(
                moref=ds._moId,
                name=props["name"],
                url=props.get("summary.url") or "",
                free_space=int(props.get("summary.freeSpace") or 0),
                capacity=int(props.get("summary.capacity") or 0),
                datacenter=dc_of.get(ds._moId, ""),
                type=props.get("summary.type") or "",
            )
        )
    return sorted(out, key=lambda d: d.name)


def list_hosts(conn: Connection, datastores: list[DatastoreInfo]) -> list[HostInfo]:
    ds_name = {d.moref: d.name for d in datastores}
    out = []
    for host, props in retrieve(conn, vim.HostSystem, ["name", "datastore", "runtime.connectionState"]):
        refs = [d._moId for d in props.get("datastore") or []]
        out.append(
            HostInfo(
                moref=host._moId,
                name=props["name"],
                datastores=tuple(sorted(ds_name.get(r, r) for r in refs)),
                connection_state=str(props.get("runtime.connectionState") or ""),
            )
        )
    return sorted(out, key=lambda h: h.name)


def list_vms(conn: Connection, datastores: list[DatastoreInfo], hosts: list[HostInfo]) -> list[VmInfo]:
    ds_by_ref = {d.moref: d for d in datastores}
    host_by_ref = {h.moref: h.name for h in hosts}
    paths = [
        "name",
        "config.hardware.device",
        "config.changeTrackingEnabled",
        "config.guestId",
        "config.template",
        "runtime.host",
        "runtime.powerState",
        "guest.toolsRunningStatus",
        "guest.toolsVersionStatus2",
        "guest.guestFamily",
        "snapshot",
    ]
    out = []
    for vm, props in retrieve(conn, vim.VirtualMachine, paths):
        if props.get("config.template"):
            continue
        disks = tuple(_disks(props.get("config.hardware.device") or [], ds_by_ref))
        host = props.get("runtime.host")
        datacenter = next((ds_by_ref[r].datacenter for r in _disk_ds_refs(props) if r in ds_by_ref), "")
        running = props.get("guest.toolsRunningStatus") or ""
        out.append(
            VmInfo(
                moref=vm._moId,
                name=props["name"],
                datacenter=datacenter,
                host=host_by_ref.get(host._moId, host._moId) if host is not None else "",
                power_state=str(props.get("runtime.powerState") or ""),
                tools_running=running == "guestToolsRunning",
                tools_running_status=running,
                tools_version_status=props.get("guest.toolsVersionStatus2") or "",
                guest_family=props.get("guest.guestFamily") or "",
                guest_id=props.get("config.guestId") or "",
                cbt_enabled=bool(props.get("config.changeTrackingEnabled")),
                disks=disks,
                snapshots=tuple(snapshot_list(props.get("snapshot"))),
            )
        )
    return sorted(out, key=lambda v: v.name)


def load_inventory(conn: Connection) -> Inventory:
    """Everything the planner needs, in a constant number of SOAP round trips."""
    datastores = list_datastores(conn)
    hosts = list_hosts(conn, datastores)
    vms = list_vms(conn, datastores, hosts)
    return Inventory(vms=tuple(vms), hosts=tuple(hosts), datastores=tuple(datastores))


def snapshot_list(info: Any) -> Iterator[SnapshotInfo]:
    """Every snapshot of a VM's ``snapshot`` property, depth first."""
    stack = list(info.rootSnapshotList) if info is not None and info.rootSnapshotList else []
    while stack:
        node = stack.pop(0)
        yield SnapshotInfo(
            moref=node.snapshot._moId,
            name=node.name or "",
            description=node.description or "",
            create_time=node.createTime,
            quiesced=bool(node.quiesced),
        )
        stack[:0] = list(node.childSnapshotList or [])


def disks_of(devices: list[Any], ds_by_ref: dict[str, DatastoreInfo]) -> list[DiskInfo]:
    return list(_disks(devices, ds_by_ref))


def _disks(devices: list[Any], ds_by_ref: dict[str, DatastoreInfo]) -> Iterator[DiskInfo]:
    for dev in devices:
        if not isinstance(dev, vim.vm.device.VirtualDisk):
            continue
        backing = dev.backing
        ds_ref = getattr(backing, "datastore", None)
        ds = ds_by_ref.get(ds_ref._moId) if ds_ref is not None else None
        file_name = getattr(backing, "fileName", "") or ""
        capacity = dev.capacityInBytes or (dev.capacityInKB or 0) * 1024
        yield DiskInfo(
            key=dev.key,
            label=dev.deviceInfo.label if dev.deviceInfo else f"disk {dev.key}",
            capacity=int(capacity),
            file_name=file_name,
            datastore=ds.name if ds else _datastore_of_path(file_name),
            change_id=getattr(backing, "changeId", None) or None,
            parent_file=getattr(getattr(backing, "parent", None), "fileName", None) or None,
        )


def _disk_ds_refs(props: dict[str, Any]) -> list[str]:
    refs = []
    for dev in props.get("config.hardware.device") or []:
        ds = getattr(getattr(dev, "backing", None), "datastore", None)
        if isinstance(dev, vim.vm.device.VirtualDisk) and ds is not None:
            refs.append(ds._moId)
    return refs


def _datastore_of_path(file_name: str) -> str:
    if file_name.startswith("[") and "]" in file_name:
        return file_name[1 : file_name.index("]")]
    return ""
