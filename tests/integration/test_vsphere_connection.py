"""Logging in to vCenter: one-line errors for a user's mistakes, re-login on an expired session."""

from __future__ import annotations

import socket

import pytest

from pipeline.errors import VmpumpError
from pipeline.vsphere.connection import VsphereConnectError, connect
from tests.fixtures.vcsim import endpoint_of

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_password_is_a_one_line_error(vcsim):
    with pytest.raises(VsphereConnectError) as err:
        connect(endpoint_of(vcsim, password="wrong"))
    assert isinstance(err.value, VmpumpError)
    assert str(err.value) == (
        f"vCenter at 127.0.0.1:{vcsim.port} rejected the login of user 'vmpump'"
        " — check the user name and password"
    )
    assert "\n" not in str(err.value)


def test_unreachable_host_is_a_one_line_error(vcsim):
    port = _free_port()
    with pytest.raises(VsphereConnectError) as err:
        connect(endpoint_of(vcsim, port=port))
    assert isinstance(err.value, VmpumpError)
    assert err.value.cause == f"cannot reach vCenter at 127.0.0.1:{port} over http (Connection refused)"
    assert "check host, port and protocol" in err.value.hint


def test_self_signed_certificate_is_refused_by_default_and_accepted_with_insecure(vcsim_factory):
    sim = vcsim_factory(vms=1, tls=True)
    with pytest.raises(VsphereConnectError) as err:
        connect(endpoint_of(sim))
    assert err.value.cause.startswith(
        f"TLS certificate of vCenter at 127.0.0.1:{sim.port} could not be verified"
    )
    assert "insecure: true" in err.value.hint
    with connect(endpoint_of(sim, insecure=True)) as conn:
        assert conn.content.about.apiType == "VirtualCenter"


def test_an_expired_session_logs_in_again_once_and_retries(vcsim, vsphere_conn):
    with connect(endpoint_of(vcsim)) as victim:
        key = victim.content.sessionManager.currentSession.key
        old_cookie = victim.session_cookie
        vsphere_conn.content.sessionManager.TerminateSession([key])
        # The next call meets NotAuthenticated, logs in again and answers.
        assert victim.content.rootFolder.name
        assert victim.session_cookie != old_cookie
        assert victim.content.sessionManager.currentSession.key != key


def test_round_trips_are_counted(vsphere_conn):
    before = vsphere_conn.round_trips
    vsphere_conn.content.rootFolder.name  # noqa: B018 - one property read is one SOAP call
    assert vsphere_conn.round_trips == before + 1


def test_a_vcenter_that_dies_mid_session_is_a_one_line_error(vcsim_factory):
    sim = vcsim_factory(hosts=1, datastores=1, vms=1)
    conn = connect(endpoint_of(sim))
    vm = conn.content.viewManager  # any call works while vCenter is up
    assert vm is not None
    sim.stop()  # vCenter goes away with the session open
    with pytest.raises(VsphereConnectError) as err:
        conn.content.rootFolder.childEntity  # noqa: B018 - a property read is a SOAP call
    assert err.value.cause.startswith(f"lost the connection to vCenter at 127.0.0.1:{sim.port} (")
    assert "rerun the job" in err.value.hint and "snapshots hunt" in err.value.hint
    assert "\n" not in str(err.value)
