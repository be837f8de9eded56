"""Reported properties: what the module tells the hub, kept here and sent as coalesced patches.

Changes accumulate in one pending patch; the reporter sends it whenever the hub is reachable, so a
status reached offline is reported after the reconnect, and a burst of steps costs one round trip.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

MAX_ERROR_CHARS = 512
STATES = ("downloading", "verifying", "loading", "active", "failed", "removed")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bounded(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_ERROR_CHARS:
        return text
    return text[: MAX_ERROR_CHARS - 1] + "…"


class ReportedState:
    def __init__(self) -> None:
        self._models: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, Any] = {}
        self.changed = asyncio.Event()

    def model(self, name: str) -> dict[str, Any] | None:
        block = self._models.get(name)
        return dict(block) if block is not None else None

    def set_model(
        self,
        name: str,
        state: str,
        desired_version: str | None,
        active_version: str | None,
        sha256: str | None,
        error: str | None = None,
        download_starts_at: str | None = None,
    ) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        # Every field is always sent (None clears it in the twin), so a block never mixes two updates.
        block = {
            "state": state,
            "desiredVersion": desired_version,
            "activeVersion": active_version,
            "sha256": sha256,
            "error": _bounded(error),
            "updatedAt": utc_now(),
        }
        # Sent while a spread delay runs (state downloading), then once as null to clear it.
        if download_starts_at is not None or (self._models.get(name) or {}).get("downloadStartsAt") is not None:
            block["downloadStartsAt"] = download_starts_at
        self._models[name] = block
        self._pending.setdefault("models", {})[name] = block
        self.changed.set()

    def resync(self, reported_models: Any) -> None:
        """After reading the twin: send again each model block the hub's copy disagrees with.

        A patch can be lost with the connection it went out on (the hub restarted before it arrived). The
        blocks we send carry every field, so a lost one is mended by sending ours again; a ``downloadStartsAt``
        the hub still shows but we no longer have is cleared with it."""
        if not isinstance(reported_models, dict):
            reported_models = {}
        for name, block in self._models.items():
            theirs = reported_models.get(name)
            theirs = theirs if isinstance(theirs, dict) else {}
            stale_start = theirs.get("downloadStartsAt") is not None and block.get("downloadStartsAt") is None
            differs = any(theirs.get(key) != value for key, value in block.items() if key != "updatedAt")
            if stale_start or differs:
                resent = {**block, "downloadStartsAt": block.get("downloadStartsAt")} if stale_start else dict(block)
                pending = self._pending.setdefault("models", {})
                pending[name] = {**resent, **pending.get(name, {})}
                self.changed.set()

    def set_probation(self, name: str, block: dict[str, Any]) -> None:
        """``models.<name>.probation``: sent beside the model's block, which it does not replace."""
        pending = self._pending.setdefault("models", {})
        pending[name] = {**pending.get(name, {}), "probation": block}
        self.changed.set()

    def set_shadow(self, name: str, block: dict[str, Any] | None) -> None:
        """``shadows.<name>`` (edge_module/shadow/); None removes it from the twin."""
        if block is not None and block.get("error"):
            block = {**block, "error": _bounded(block["error"])}
        self._pending.setdefault("shadows", {})[name] = block
        self.changed.set()

    def set_desired_status(self, version: int | None, code: int, description: str) -> None:
        status = {"code": code, "description": _bounded(description)}
        if version is not None:
            self._pending["lastDesiredVersion"] = version
        self._pending["lastDesiredStatus"] = status
        self.changed.set()

    def take(self) -> dict[str, Any]:
        """The pending patch, now owned by the caller; ``restore`` it if sending fails."""
        patch, self._pending = self._pending, {}
        return patch

    def restore(self, patch: dict[str, Any]) -> None:
        """Put back a patch that was not delivered, under anything newer that arrived since."""
        newer = self._pending
        merged = {**patch, **{k: v for k, v in newer.items() if k not in ("models", "shadows")}}
        shadows = {**patch.get("shadows", {}), **newer.get("shadows", {})}
        if shadows:
            merged["shadows"] = shadows
        older_models = patch.get("models", {})
        newer_models = newer.get("models", {})
        models = {
            name: {**older_models.get(name, {}), **newer_models.get(name, {})}
            for name in {**older_models, **newer_models}
        }
        if models:
            merged["models"] = models
        self._pending = merged
        if merged:
            self.changed.set()

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)
