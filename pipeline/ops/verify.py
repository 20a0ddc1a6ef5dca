"""Verify a repository: every chunk any restore point references is there (quick) and intact (full).

- quick: each referenced chunk is in the index, its pack is listed, and the pack's own trailer
  (two small ranged reads per pack, no payloads) names the chunk at the offset and length the index
  gives;
- full: each referenced pack is read once, in parallel (Ray tasks when Ray runs), and every
  referenced chunk in it is decoded and re-hashed.

Every problem names the chunks and the restore points it damages; damaged and missing chunks are
also marked in the repository (``damaged/``) so the next backup re-uploads them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine.dedup import RepoLocation
from pipeline.errors import VmpumpError
from pipeline.ops.damaged import mark_damaged
from pipeline.ops.errors import VerifyFailedError
from pipeline.ops.parallel import run_bounded, run_tasks
from pipeline.ops.reader import read_other_copy
from pipeline.store.chunks import decode_chunk, read_pack_entries
from pipeline.store.errors import ObjectMissingError, StoreError
from pipeline.store.repository import Repository


@dataclass(frozen=True)
class Problem:
    kind: str  # "manifest" | "missing-index" | "missing-pack" | "damaged-pack" | "damaged-chunk"
    pack_id: str | None
    chunk_ids: tuple[bytes, ...]
    detail: str
    points: tuple[str, ...] = ()

    def describe(self) -> str:
        what = (
            f"chunk {self.chunk_ids[0].hex()}"
            if len(self.chunk_ids) == 1
            else f"{len(self.chunk_ids)} chunks"
        )
        where = f" in pack {self.pack_id}" if self.pack_id else ""
        pts = ", ".join(self.points) or "none"
        subject = f"{what}{where}: " if self.chunk_ids else ""
        return f"{self.kind}: {subject}{self.detail} (restore points damaged: {pts})"


@dataclass
class VerifyReport:
    mode: str  # "quick" | "full"
    points: int = 0
    disks: int = 0
    chunks: int = 0  # distinct chunks checked
    packs: int = 0
    bytes_read: int = 0
    wall_s: float = 0.0
    marked: int = 0  # damaged/ markers written
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def damaged_points(self) -> set[str]:
        return {p for problem in self.problems for p in problem.points}

    def lines(self) -> list[str]:
        head = (
            f"verify ({self.mode}): {self.points} restore points, {self.disks} disks, {self.chunks} chunks in "
            f"{self.packs} packs checked in {self.wall_s:.1f}s"
            + (f", {self.bytes_read / (1 << 20):.0f} MiB read" if self.bytes_read else "")
        )
        if self.ok:
            return [head, "no problems found"]
        tail = f"{len(self.problems)} problems; {len(self.damaged_points())} restore points damaged"
        return [head, *(p.describe() for p in self.problems), tail]

    def raise_if_damaged(self) -> None:
        """For the CLI: a ``VerifyFailedError`` (exit code 3) when anything was found."""
        if not self.ok:
            raise VerifyFailedError(
                f"verify found {len(self.problems)} problems damaging restore points "
                f"{', '.join(sorted(self.damaged_points())) or '(none)'}",
                "the next backup re-uploads damaged blocks its sources still have; "
                "until then restore those points from another copy",
            )


def verify_repository(
    location: RepoLocation, *, full: bool = False, tasks: int = 2, threads: int = 2, mark: bool = True
) -> VerifyReport:
    started = time.perf_counter()
    repo = location.open()
    report = VerifyReport("full" if full else "quick")
    manifests, users = _referenced(repo, report)
    ids = pc.unique(pa.chunked_array(list(manifests.values()), pa.binary(32)).combine_chunks())
    located = repo.chunk_index(refresh=True).locate(ids)
    rows = pa.table(
        {
            "chunk_id": ids,
            **{name: located.column(name) for name in ("pack_id", "offset", "length", "raw_length", "codec")},
        }
    )
    unindexed = rows.filter(pc.is_null(rows.column("pack_id")))
    if unindexed.num_rows:
        report.problems.append(
            Problem(
                "missing-index", None, tuple(unindexed.column("chunk_id").to_pylist()), "in no index segment"
            )
        )
    rows = rows.filter(pc.is_valid(rows.column("pack_id")))
    packs = sorted(set(rows.column("pack_id").to_pylist()))
    report.chunks, report.packs = len(ids), len(packs)
    if full:
        groups = [packs[i :: max(1, tasks)] for i in range(max(1, min(tasks, len(packs))))]
        calls = [
            (location, rows.filter(pc.is_in(rows.column("pack_id"), pa.array(g))), threads) for g in groups
        ]
        for found, nbytes in run_tasks(check_packs_full, calls, cpus=1.0, first_here=True):
            report.problems.extend(found)
            report.bytes_read += nbytes
    else:
        report.problems.extend(_check_packs_quick(repo, rows, packs, threads))
    report.problems = [
        _with_points(p, manifests, users) for p in _without_healed(repo, report.problems, full)
    ]
    if mark:
        for p in report.problems:
            if p.chunk_ids:
                report.marked += mark_damaged(
                    repo, p.chunk_ids, pack_id=p.pack_id, kind=p.kind, detail=p.detail, points=p.points
                )
    report.wall_s = time.perf_counter() - started
    return report


def _referenced(repo: Repository, report: VerifyReport) -> tuple[dict[str, pa.Array], dict[str, set[str]]]:
    """Distinct chunk ids of every manifest a restore point names, and which points use each manifest."""
    manifests: dict[str, pa.Array] = {}
    users: dict[str, set[str]] = {}
    for point in repo.restore_points():
        report.points += 1
        for disk in point.disks:
            report.disks += 1
            users.setdefault(disk.manifest_key, set()).add(point.id)
            if disk.manifest_key in manifests:
                continue
            try:
                manifests[disk.manifest_key] = repo.read_manifest(disk.manifest_key).referenced_chunk_ids()
            except (VmpumpError, ValueError, KeyError) as e:
                report.problems.append(
                    Problem(
                        "manifest",
                        None,
                        (),
                        f"manifest {disk.manifest_key} of disk {disk.disk_key}: {e}",
                        (point.id,),
                    )
                )
    return manifests, users


def _without_healed(repo: Repository, problems: list[Problem], full: bool) -> list[Problem]:
    """Drop chunks that have an intact copy in another pack (a backup healed them): quick trusts a
    listed pack, full reads the copy back."""
    if not any(p.pack_id for p in problems):
        return problems
    table = repo.chunk_index().table
    listed = {key.rsplit("/", 1)[-1] for key in repo.store.list_keys("packs/")}
    out = []
    for p in problems:
        if p.pack_id is None:
            out.append(p)
            continue
        still = tuple(cid for cid in p.chunk_ids if not _has_copy(repo, table, cid, p.pack_id, listed, full))
        if still:
            out.append(Problem(p.kind, p.pack_id, still, p.detail, p.points))
    return out


def _has_copy(
    repo: Repository, table: pa.Table, chunk_id: bytes, bad_pack: str, listed: set[str], full: bool
) -> bool:
    if full:
        return read_other_copy(repo, chunk_id, bad_pack) is not None
    rows = table.filter(pc.equal(table.column("chunk_id"), pa.scalar(chunk_id, pa.binary(32))))
    return any(pack != bad_pack and pack in listed for pack in rows.column("pack_id").to_pylist())


def _with_points(problem: Problem, manifests: dict[str, pa.Array], users: dict[str, set[str]]) -> Problem:
    if not problem.chunk_ids:
        return problem
    bad = pa.array(problem.chunk_ids, pa.binary(32))
    points: set[str] = set(problem.points)
    for key, ids in manifests.items():
        if pc.any(pc.is_in(ids, value_set=bad)).as_py():
            points |= users[key]
    return Problem(problem.kind, problem.pack_id, problem.chunk_ids, problem.detail, tuple(sorted(points)))


def _check_packs_quick(repo: Repository, rows: pa.Table, packs: Sequence[str], threads: int) -> list[Problem]:
    listed = {key.rsplit("/", 1)[-1] for key in repo.store.list_keys("packs/")}
    by_pack = _rows_by_pack(rows)
    problems = [
        Problem("missing-pack", pack, tuple(r[0] for r in by_pack[pack]), "the pack object is missing")
        for pack in packs
        if pack not in listed
    ]

    def check(pack: str) -> list[Problem]:
        try:
            trailer = {e.chunk_id: e for e in read_pack_entries(repo.store, pack)}
        except StoreError as e:
            return [Problem("damaged-pack", pack, tuple(r[0] for r in by_pack[pack]), e.cause)]
        wrong = tuple(
            cid
            for cid, _pack, offset, length, raw, codec in by_pack[pack]
            if (e := trailer.get(cid)) is None
            or (e.offset, e.length, e.raw_length, e.codec) != (offset, length, raw, codec)
        )
        return (
            [Problem("damaged-pack", pack, wrong, "the pack's trailer disagrees with the index")]
            if wrong
            else []
        )

    for found in run_bounded(check, [p for p in packs if p in listed], max(4, threads)):
        problems.extend(found)
    return problems


def check_packs_full(location: RepoLocation, rows: pa.Table, threads: int) -> tuple[list[Problem], int]:
    """Read each pack of ``rows`` once and re-hash every chunk of it they list (runs as a task)."""
    repo = location.open()
    by_pack = _rows_by_pack(rows)

    def check(pack: str) -> tuple[list[Problem], int]:
        members = by_pack[pack]
        end = max(offset + length for _cid, _p, offset, length, _raw, _codec in members)
        try:
            # a ranged read of the whole pack: S3's whole-object checksum would hide which chunk is bad
            data = repo.read_pack_range(pack, 0, end)
        except ObjectMissingError:
            return [
                Problem("missing-pack", pack, tuple(m[0] for m in members), "the pack object is missing")
            ], 0
        except StoreError as e:
            return [Problem("damaged-pack", pack, tuple(m[0] for m in members), e.cause)], 0
        problems = []
        for cid, _pack, offset, length, raw, codec in members:
            if not _intact(repo, cid, data[offset : offset + length], raw, codec):
                problems.append(
                    Problem(
                        "damaged-chunk",
                        pack,
                        (cid,),
                        f"the payload at offset {offset} does not hash to its id",
                    )
                )
        return problems, len(data)

    problems: list[Problem] = []
    nbytes = 0
    for found, n in run_bounded(check, sorted(by_pack), threads):
        problems.extend(found)
        nbytes += n
    return problems, nbytes


def _intact(repo: Repository, chunk_id: bytes, payload: bytes, raw_length: int, codec: str) -> bool:
    try:
        plain = decode_chunk(codec, payload, raw_length)
    except Exception:  # zstandard raises its own error type for damaged frames
        return False
    return len(plain) == raw_length and repo.chunk_id(plain) == chunk_id


def _rows_by_pack(rows: pa.Table) -> dict[str, list[tuple]]:
    cols = [
        rows.column(n).to_pylist() for n in ("chunk_id", "pack_id", "offset", "length", "raw_length", "codec")
    ]
    out: dict[str, list[tuple]] = {}
    for row in zip(*cols, strict=True):
        out.setdefault(row[1], []).append(row)
    return out
