"""The job configuration: one YAML file, validated with pydantic.

A bad file gets one line naming the file, the line, the field and what is wrong with it; never a
traceback. Secrets never come from the command line: the vCenter password is read from an
environment variable or a file named in the config, S3 credentials from the standard boto3 chain.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "t": TiB,
    "tb": TiB,
    "tib": TiB,
}
# Sizes are binary throughout: a "1 MB" block that is not 2**20 would break offset alignment.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """``1048576``, ``"1MiB"``, ``"512 KiB"``, ``"2G"`` → bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1MiB, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"expected a size such as 1MiB or 512KiB, got {value!r}")


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VCenterConfig(_Section):
    host: str = Field(min_length=1)
    port: int = Field(default=443, ge=1, le=65535)
    user: str = Field(min_length=1)
    password_env: str | None = None
    password_file: Path | None = None
    protocol: Literal["https", "http"] = "https"
    insecure: bool = Field(default=False, description="skip TLS certificate verification")
    datacenter: str | None = None

    @model_validator(mode="after")
    def _one_password_source(self) -> VCenterConfig:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("set exactly one of password_env or password_file (never the password itself)")
        return self

    def password(self) -> str:
        """Read the password from where the config says; a missing one is a ConfigError."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                raise ConfigError(
                    f"environment variable {self.password_env} (vcenter.password_env) is not set",
                    f"export {self.password_env}=... before running vmpump",
                )
            return value
        assert self.password_file is not None
        try:
            value = self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read vcenter.password_file {self.password_file}: {exc.strerror}",
                "create the file with the password on its first line, readable only by this user",
            ) from None
        if not value:
            raise ConfigError(
                f"vcenter.password_file {self.password_file} is empty", "write the password into it"
            )
        return value


class SelectionConfig(_Section):
    vms: list[str] = Field(default_factory=lambda: ["*"], description="VM name patterns (glob)")
    exclude: list[str] = Field(default_factory=list)

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.vms) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.exclude
        )


class RepositoryConfig(_Section):
    url: str
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        parsed = urlparse(url)
        if parsed.scheme == "file":
            if parsed.netloc or not parsed.path.startswith("/"):
                raise ValueError("a file repository needs an absolute path: file:///srv/vmpump")
        elif parsed.scheme == "s3":
            if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", parsed.netloc or ""):
                raise ValueError(f"{parsed.netloc!r} is not a valid S3 bucket name (s3://bucket/prefix)")
        else:
            raise ValueError("url must be file:///absolute/path or s3://bucket/prefix")
        return url

    @field_validator("endpoint_url")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url is not None and urlparse(url).scheme not in ("http", "https"):
            raise ValueError("endpoint_url must start with http:// or https://")
        return url


class BackupConfig(_Section):
    block_size: ByteSize = MiB
    compression_level: int = Field(default=3, ge=1, le=19)
    pack_size: ByteSize = 32 * MiB
    quiesce: Literal["require", "prefer", "off"] = "prefer"
    transport: Literal["http", "file", "nbd"] = "http"
    datastore_paths: dict[str, Path] = Field(
        default_factory=dict, description="file transport: datastore name → local (NFS) mount path"
    )
    cbt_guard_share: float = Field(default=0.001, ge=0.0, le=1.0)

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, bs: int) -> int:
        if not (256 * KiB <= bs <= 8 * MiB) or bs & (bs - 1):
            raise ValueError(f"block_size must be a power of two from 256KiB to 8MiB, got {bs} bytes")
        return bs

    @field_validator("pack_size")
    @classmethod
    def _pack_size(cls, size: int) -> int:
        if not (8 * MiB <= size <= 1 * GiB):
            raise ValueError("pack_size must be from 8MiB to 1GiB (tens of MiB is best)")
        return size


class PlacementConfig(_Section):
    slots_per_proxy: int | None = Field(default=None, ge=1, description="default: from cores and RAM")
    cpus_per_task: float = Field(default=1.0, gt=0)
    memory_per_task: ByteSize = 2 * GiB
    max_snapshots_per_host: int = Field(default=4, ge=1)
    max_snapshots_per_datastore: int = Field(default=4, ge=1)
    max_reads_per_datastore: int = Field(default=8, ge=1)
    max_disks_per_host: int = Field(default=50, ge=1)
    latency_stop_ms: float = Field(default=20.0, gt=0)
    latency_slow_ms: float = Field(default=30.0, gt=0)
    adaptive: bool = False

    @model_validator(mode="after")
    def _thresholds(self) -> PlacementConfig:
        if self.latency_slow_ms < self.latency_stop_ms:
            raise ValueError("latency_slow_ms must be at least latency_stop_ms (defaults 30 and 20)")
        return self


class SyntheticDiskConfig(_Section):
    vm: str = Field(min_length=1)
    disk: str = "disk0"
    size: ByteSize = Field(gt=0)
    zero_share: float = Field(default=0.3, ge=0, le=1)
    duplicate_share: float = Field(default=0.1, ge=0, le=1)
    compressible_share: float = Field(default=0.3, ge=0, le=1)
    change_rate: float = Field(default=0.01, ge=0, le=1, description="share of blocks changed per generation")
    seed: int = 0

    @model_validator(mode="after")
    def _shares(self) -> SyntheticDiskConfig:
        if self.zero_share + self.duplicate_share + self.compressible_share > 1.0 + 1e-9:
            raise ValueError("zero_share + duplicate_share + compressible_share must not exceed 1")
        return self


class JobConfig(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    source: Literal["vsphere", "synthetic"] = "vsphere"
    vcenter: VCenterConfig | None = None
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    repository: RepositoryConfig
    backup: BackupConfig = Field(default_factory=BackupConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    synthetic: list[SyntheticDiskConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _source_has_its_section(self) -> JobConfig:
        if self.source == "vsphere" and self.vcenter is None:
            raise ValueError("source vsphere needs a vcenter section (host, user, password_env)")
        if self.source == "synthetic" and not self.synthetic:
            raise ValueError("source synthetic needs a synthetic list of disks")
        if self.backup.transport == "file" and not self.backup.datastore_paths:
            raise ValueError("transport file needs backup.datastore_paths (datastore name → mount path)")
        return self


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a job file; every problem becomes one ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", "pass the path of a job YAML file") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {exc.strerror}", "check the path and permissions"
        ) from None
    return parse_config(text, str(path))


def parse_config(text: str, origin: str = "<config>") -> JobConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin} line {mark.line + 1}" if mark is not None else origin
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem})", "check indentation and quoting") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of settings at the top", "see configs/demo.yaml")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, node, origin) from None


def _config_error(exc: ValidationError, root: yaml.Node | None, origin: str) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    field = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{origin} line {line}" if line else origin
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return ConfigError(
            f"{where}: unknown setting {field}", "check the spelling; see configs/ for examples"
        )
    if err["type"] == "missing":
        return ConfigError(f"{where}: {field} is required but missing", "see configs/ for annotated examples")
    return ConfigError(f"{where}: {field}: {msg}", "see configs/ for annotated examples")


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """1-based line of the deepest YAML node along ``loc`` (the field, or its nearest parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
            if pair is None:
                return line
            key_node, node = pair
            line = key_node.start_mark.line + 1  # the line that names the field
            continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return line
        line = node.start_mark.line + 1
    return line
