"""Reported-state bookkeeping and the fetch helpers that keep secrets out of logs and reports."""

from __future__ import annotations

import pytest

from edge_module.twin.fetch import FetchError, check_scheme, redact
from edge_module.twin.reported import MAX_ERROR_CHARS, ReportedState


def test_redact_drops_query_fragment_and_user_info() -> None:
    uri = "https://user:pw@acct.blob.core.windows.net:443/models/iris/3/model.onnx?sv=2024&sig=SECRET#frag"
    assert redact(uri) == "https://acct.blob.core.windows.net:443/models/iris/3/model.onnx"
    assert redact("file:///var/models/x.onnx") == "file:///var/models/x.onnx"


def test_insecure_schemes_need_the_setting() -> None:
    assert check_scheme("https://host/x.onnx?sig=1", allow_insecure=False) == "https"
    assert check_scheme("http://host/x.onnx", allow_insecure=True) == "http"
    for uri in ("http://host/x.onnx?sig=SECRET", "file:///x.onnx", "ftp://host/x"):
        with pytest.raises(FetchError) as info:
            check_scheme(uri, allow_insecure=False)
        assert "SECRET" not in info.value.message
    with pytest.raises(FetchError):
        check_scheme("ftp://host/x", allow_insecure=True)


async def test_pending_patches_coalesce_and_survive_a_failed_send() -> None:
    state = ReportedState()
    state.set_model("iris", "downloading", "2", "1", "a" * 64)
    state.set_model("iris", "failed", "2", "1", "a" * 64, "x" * 5000)
    patch = state.take()
    block = patch["models"]["iris"]
    assert block["state"] == "failed" and len(block["error"]) == MAX_ERROR_CHARS
    assert not state.has_pending

    # The send failed; meanwhile a newer status arrived. The newer one wins, nothing is lost.
    state.set_model("diabetes", "active", "1", "1", "b" * 64)
    state.set_desired_status(7, 200, "all desired models applied")
    state.restore(patch)
    merged = state.take()
    assert set(merged["models"]) == {"iris", "diabetes"}
    assert merged["models"]["iris"]["state"] == "failed"
    assert merged["lastDesiredVersion"] == 7 and merged["lastDesiredStatus"]["code"] == 200
    with pytest.raises(ValueError):
        state.set_model("iris", "exploded", None, None, None)


def test_a_full_sync_sends_again_what_the_hub_lost() -> None:
    """A patch lost with its connection (the hub restarted) is mended from the twin read at reconnection."""
    from edge_module.twin.reported import ReportedState

    reported = ReportedState()
    reported.set_model("iris", "downloading", "2", "1", None, download_starts_at="2026-12-05T03:00:00+00:00")
    reported.set_model("iris", "downloading", "2", "1", None)  # the delay ran out: null clears it in the twin
    reported.set_model("iris", "active", "2", "2", "ab" * 32)
    delivered = reported.take()
    assert "downloadStartsAt" not in delivered["models"]["iris"]
    ours = reported.model("iris")
    assert ours is not None

    in_sync = {**ours, "updatedAt": "earlier"}
    reported.resync({"iris": in_sync})
    assert reported.take() == {}  # the hub has it: nothing to send

    # The hub kept the waiting block: the clearing patch never arrived.
    lost = {**in_sync, "state": "downloading", "activeVersion": "1", "downloadStartsAt": "2026-12-05T03:00:00+00:00"}
    reported.resync({"iris": lost})
    resent = reported.take()["models"]["iris"]
    assert resent["state"] == "active" and resent["activeVersion"] == "2"
    assert "downloadStartsAt" in resent and resent["downloadStartsAt"] is None

    reported.resync(None)  # a twin without reported models: ours are all sent
    assert reported.take()["models"]["iris"]["state"] == "active"
