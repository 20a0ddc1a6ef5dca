"""A pyvmomi session to a vCenter: TLS, login, keep-alive, re-login, SOAP round-trip count.

Every SOAP call goes through ``_SessionStub.InvokeMethod``; that one place counts round trips (so a
test can prove an inventory costs a constant number of calls) and logs in again once when vCenter
answers ``NotAuthenticated`` (an idle session expired).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from types import TracebackType
from typing import Any

import pyVim.connect
from pyVmomi import SoapStubAdapter, vim, vmodl
from pyVmomi.VmomiSupport import GetServiceVersions

from pipeline.errors import VmpumpError

SESSION_COOKIE = "vmware_soap_session"


class VsphereError(VmpumpError):
    """vCenter refused or failed a request."""


class VsphereConnectError(VsphereError):
    """vCenter could not be reached, or refused the login."""


class VspherePermissionError(VsphereError):
    """The vCenter user lacks a privilege the backup needs."""


@dataclass(frozen=True)
class VsphereEndpoint:
    """Where and how to log in. The password comes from the caller (config: env or file)."""

    host: str
    user: str
    password: str = field(repr=False)
    port: int = 443
    protocol: str = "https"  # "http" only for the simulator
    insecure: bool = False  # skip TLS verification (self-signed vCenter)
    ca_file: str | None = None
    timeout_s: float = 120.0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class _SessionStub(SoapStubAdapter):
    """The SOAP stub with a round-trip counter and one re-login on an expired session."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.round_trips = 0
        self.relogin: Any = None  # set by Connection once logged in
        self.address = f"{kwargs.get('host', '?')}:{abs(int(kwargs.get('port', 443)))}"
        self._lock = threading.Lock()

    def InvokeMethod(self, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N802
        with self._lock:
            self.round_trips += 1
        try:
            return super().InvokeMethod(mo, info, args, outerStub)
        except vim.fault.NotAuthenticated:  # a subclass of NoPermission: the session expired
            if self.relogin is None or info.name in ("Login", "Logout"):
                raise
            self.relogin()
            with self._lock:
                self.round_trips += 1
            try:
                return super().InvokeMethod(mo, info, args, outerStub)
            except vim.fault.NoPermission as exc:
                raise _permission_error(info.name, exc) from exc
        except vim.fault.NoPermission as exc:
            raise _permission_error(info.name, exc) from exc
        except (OSError, http.client.HTTPException) as exc:  # vCenter went away mid-session
            raise _lost_connection(self.address, info.name, exc) from exc


def _lost_connection(address: str, method: str, exc: BaseException) -> VsphereConnectError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return VsphereConnectError(
        f"lost the connection to vCenter at {address} ({reason}; request {method})",
        "check that vCenter is up, then rerun the job; `vmpump snapshots hunt` removes any snapshot "
        "this run could not",
    )


def _permission_error(method: str, exc: Any) -> VspherePermissionError:
    return VspherePermissionError(
        f"the vCenter user lacks privilege {exc.privilegeId or '?'} for {method}"
        f" on {getattr(exc.object, '_moId', '?')}",
        "grant the backup role (snapshots, disk read, change tracking) to this user",
    )


class Connection:
    """A logged-in vCenter session; use as a context manager or call ``close``."""

    def __init__(self, endpoint: VsphereEndpoint) -> None:
        self.endpoint = endpoint
        self._relogin_lock = threading.Lock()
        self.stub = _open_stub(endpoint)
        self.si = vim.ServiceInstance("ServiceInstance", self.stub)
        try:
            self.content = self.si.RetrieveContent()
            self._login()
        except BaseException as exc:
            raise _translate(exc, endpoint) from exc
        self.stub.relogin = self.relogin

    @property
    def round_trips(self) -> int:
        """SOAP requests sent on this connection so far."""
        return self.stub.round_trips

    @property
    def session_cookie(self) -> str:
        """The ``vmware_soap_session`` value; datastore HTTP requests must carry it."""
        parsed = SimpleCookie(self.stub.cookie)
        morsel = parsed.get(SESSION_COOKIE)
        return morsel.value if morsel else ""

    @property
    def base_url(self) -> str:
        return f"{self.endpoint.protocol}://{self.endpoint.host}:{self.endpoint.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        return _ssl_context(self.endpoint)

    def _login(self) -> None:
        ep = self.endpoint
        self.content.sessionManager.Login(ep.user, ep.password)

    def relogin(self) -> None:
        with self._relogin_lock:
            try:
                self._login()
            except BaseException as exc:
                raise _translate(exc, self.endpoint) from exc

    def keepalive(self) -> None:
        """One cheap call, so a long read does not let an idle session expire."""
        self.si.CurrentTime()

    def close(self) -> None:
        try:
            self.content.sessionManager.Logout()
        except Exception:  # noqa: BLE001 - the session may already be gone; nothing to undo
            pass
        self.stub.DropConnections()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(endpoint: VsphereEndpoint) -> Connection:
    """Log in to vCenter; a user's mistake raises ``VsphereConnectError`` with a one-line cause."""
    return Connection(endpoint)


def _ssl_context(endpoint: VsphereEndpoint) -> ssl.SSLContext | None:
    if endpoint.protocol == "http":
        return None
    if endpoint.insecure:
        return ssl._create_unverified_context()  # the user opted out for a self-signed vCenter
    # An explicit context: pyvmomi would otherwise skip verification for 127.0.0.1.
    return ssl.create_default_context(cafile=endpoint.ca_file)


def _open_stub(endpoint: VsphereEndpoint) -> _SessionStub:
    if endpoint.protocol not in ("http", "https"):
        raise VsphereConnectError(
            f"unknown protocol {endpoint.protocol!r} for vCenter", "use https (or http)"
        )
    # pyvmomi signals plain http with a negative port.
    port = endpoint.port if endpoint.protocol == "https" else -endpoint.port
    context = _ssl_context(endpoint)
    # The API version negotiation SmartConnect uses (pyVim keeps it module-private).
    find_version = getattr(pyVim.connect, "__FindSupportedVersion")
    try:
        version = find_version(
            endpoint.protocol,
            endpoint.host,
            endpoint.port,
            "/sdk",
            GetServiceVersions("vim25"),
            context,
            None,
            80,
            None,
        )
    except BaseException as exc:
        raise _translate(exc, endpoint) from exc
    if version is None:
        raise VsphereConnectError(
            f"{endpoint.address} does not answer as a vCenter (no vimServiceVersions.xml)",
            "check host and port: they must point at vCenter's SDK endpoint",
        )
    return _SessionStub(
        host=endpoint.host,
        port=port,
        version=version,
        sslContext=context,
        httpConnectionTimeout=endpoint.timeout_s,
        poolSize=8,
    )


def _translate(exc: BaseException, endpoint: VsphereEndpoint) -> BaseException:
    """A user's mistake becomes one line with a hint; anything else passes through unchanged."""
    if isinstance(exc, VmpumpError):
        return exc
    where = f"vCenter at {endpoint.address}"
    cert_error = _find_cause(exc, ssl.SSLCertVerificationError)
    if cert_error is not None:
        return VsphereConnectError(
            f"TLS certificate of {where} could not be verified ({cert_error.verify_message})",
            "install the vCenter's CA certificate (ca_file), or set insecure: true for a self-signed vCenter",
        )
    if isinstance(exc, vim.fault.InvalidLogin):
        return VsphereConnectError(
            f"{where} rejected the login of user {endpoint.user!r}", "check the user name and password"
        )
    network = _find_cause(exc, (OSError, http.client.HTTPException, socket.timeout))
    if network is not None or "is down or is not a VIM server" in str(exc):
        reason = (
            network.strerror if isinstance(network, OSError) and network.strerror else str(network or exc)
        )
        return VsphereConnectError(
            f"cannot reach {where} over {endpoint.protocol} ({reason})",
            "check host, port and protocol, and that vCenter is up and reachable from here",
        )
    if isinstance(exc, vmodl.MethodFault):
        return VsphereError(f"{where} refused the request: {exc.msg or type(exc).__name__}")
    return exc


def _find_cause(exc: BaseException | None, kinds: type | tuple[type, ...]) -> Any:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kinds):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
