"""One model's update: verify the signature, fetch, verify the bytes, load and swap, and report each step.

Any failure leaves the version that was serving in place; the outcome says whether trying the same
release again later could help (network trouble) or not (a bad hash, signature or model).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from edge_module.errors import EdgeError, ModelNotFound
from edge_module.manager import ModelManager
from edge_module.release import Release, SignatureError, verify_signature
from edge_module.twin.fetch import FetchError, FetchPolicy, fetch_release
from edge_module.twin.reported import ReportedState
from edge_module.twin.spread import DownloadSpread, wait_to_download

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    ACTIVE = "active"
    REMOVED = "removed"
    FAILED = "failed"
    RETRY = "retry"  # failed for a transient reason: the same release is worth another try


@dataclass
class ModelUpdater:
    manager: ModelManager
    policy: FetchPolicy
    trusted_keys: list[Any]
    reported: ReportedState
    # Set when EDGE_TRUSTED_KEYS is configured but yields no key: refuse everything rather than fail open.
    keys_error: str | None = None
    spread: DownloadSpread = field(default_factory=DownloadSpread)

    def _active(self, name: str) -> tuple[str | None, str | None]:
        served = self.manager.repository.served(name)
        if served is None:
            return None, None
        return served.active.version, served.active.sha256

    def _report(self, name: str, state: str, desired: str | None, error: str | None = None) -> None:
        version, sha256 = self._active(name)
        self.reported.set_model(name, state, desired, version, sha256, error)

    async def apply(self, name: str, release: Release | None) -> Outcome:
        if release is None:
            return await self._remove(name)
        try:
            return await self._install(release)
        except asyncio.CancelledError:
            raise
        except FetchError as exc:
            outcome = Outcome.RETRY if exc.transient else Outcome.FAILED
            return self._failed(release, exc.message, outcome)
        except EdgeError as exc:
            return self._failed(release, exc.message, Outcome.FAILED)
        except OSError as exc:  # a full disk, or no process could be started for the model check: retried
            return self._failed(release, f"i/o error: {exc}", Outcome.RETRY)
        except Exception as exc:  # a bug or a library surprise must still end in a reported state
            log.exception("model %s version %s: unexpected error", release.name, release.version)
            detail = str(exc).split("?")[0][:200]  # library messages may quote a URL with its SAS
            return self._failed(release, f"unexpected error: {type(exc).__name__}: {detail}", Outcome.FAILED)

    def _failed(self, release: Release, message: str, outcome: Outcome) -> Outcome:
        log.error("model %s version %s update failed: %s", release.name, release.version, message)
        self._report(release.name, "failed", release.version, message)
        return outcome

    async def _install(self, release: Release) -> Outcome:
        name = release.name
        if self._active(name) == (release.version, release.sha256):
            self._report(name, "active", release.version)
            return Outcome.ACTIVE
        rejected = self.manager.rejection(name, release.version, release.sha256)
        if rejected is not None:
            return self._failed(release, rejected, Outcome.FAILED)
        if self.keys_error:
            raise SignatureError(self.keys_error)
        verify_signature(release, self.trusted_keys)
        store = self.manager.store
        if not await asyncio.to_thread(store.has_blob, release.sha256):
            await wait_to_download(self.spread, release, lambda at: self._waiting(release, at))
            self._report(name, "downloading", release.version)
            log.info("model %s version %s: downloading", name, release.version)
            await fetch_release(release, store, self.policy, on_verifying=lambda: self._verifying(release))
        self._report(name, "loading", release.version)
        # A load is not interrupted once started: a superseding release waits for it, then applies.
        activation = asyncio.ensure_future(self.manager.activate_blob(name, release.version, release.sha256))
        activation.add_done_callback(_consume)
        await asyncio.shield(activation)
        self._report(name, "active", release.version)
        return Outcome.ACTIVE

    def _waiting(self, release: Release, starts_at: str) -> None:
        version, sha256 = self._active(release.name)
        self.reported.set_model(release.name, "downloading", release.version, version, sha256, None, starts_at)

    def _verifying(self, release: Release) -> None:
        self._report(release.name, "verifying", release.version)

    async def _remove(self, name: str) -> Outcome:
        try:
            await self.manager.remove(name)
        except ModelNotFound:
            pass
        except EdgeError as exc:
            self.reported.set_model(name, "failed", None, *self._active(name), exc.message)
            return Outcome.FAILED
        self.reported.set_model(name, "removed", None, None, None)
        return Outcome.REMOVED


def _consume(future: asyncio.Future[Any]) -> None:
    # The awaiting task may have been cancelled (superseded); its error is reported by the next run.
    if not future.cancelled():
        future.exception()
