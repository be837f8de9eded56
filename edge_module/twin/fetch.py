"""Download a release's ONNX file into the store: bounded, resumable, retried, never logging secrets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from edge_module.errors import DigestMismatch, EdgeError
from edge_module.release import Release
from edge_module.store import ModelStore

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024
_MAX_BACKOFF = 60.0


class FetchError(EdgeError):
    """A download that failed. ``transient`` failures (network) are worth trying again later."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message, 502)
        self.transient = transient


class VerificationError(EdgeError):
    """Downloaded bytes that are not the release (size or sha256)."""

    status_code = 422


@dataclass(frozen=True)
class FetchPolicy:
    allow_insecure: bool
    max_bytes: int
    timeout: float
    attempts: int
    backoff: float


def redact(uri: str) -> str:
    """The URI without query or fragment (a SAS token lives in the query) or user info."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return "<unparseable uri>"
    netloc = parts.hostname or ""
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_scheme(uri: str, allow_insecure: bool) -> str:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - parsing the port is what raises on an out-of-range one
    except ValueError as exc:
        raise FetchError(f"uri is not a valid URL ({exc}): {redact(uri)}") from None
    scheme = parts.scheme.lower()
    if scheme == "https" or (allow_insecure and scheme in ("http", "file")):
        return scheme
    allowed = "https, http, file" if allow_insecure else "https (set EDGE_ALLOW_INSECURE_URIS for http/file)"
    raise FetchError(f"uri scheme '{scheme}' is not allowed; use {allowed}: {redact(uri)}")


async def fetch_release(
    release: Release, store: ModelStore, policy: FetchPolicy, on_verifying: Callable[[], None] = lambda: None
) -> str:
    """Download ``release`` into the store, verify size and sha256, commit it; returns the blob's sha256."""
    scheme = check_scheme(release.uri, policy.allow_insecure)
    limit = release.size if release.size is not None else policy.max_bytes
    if limit > policy.max_bytes:
        raise VerificationError(f"release size {release.size} is over the {policy.max_bytes}-byte cap")
    if scheme == "file":
        with store.temp_file() as (path, handle):
            await asyncio.to_thread(_copy_file, release.uri, handle, limit)
            return await _commit(release, store, path, handle, on_verifying)
    # A download resumes from what earlier attempts, or a process before a restart, already stored.
    with store.resumable_file(release.sha256) as (path, handle):
        if handle.tell():
            log.info("resuming the download of %s at %d bytes", redact(release.uri), handle.tell())
        try:
            await _download(release.uri, handle, limit, policy)
            return await _commit(release, store, path, handle, on_verifying)
        except FetchError:
            raise  # the network or the URL failed: what arrived is kept for the next attempt
        except Exception:
            # Bytes that are not the release, or a full disk that the partial file would keep full.
            store.discard_partial(release.sha256)
            raise


async def _commit(
    release: Release, store: ModelStore, path: Path, handle: BinaryIO, on_verifying: Callable[[], None]
) -> str:
    await asyncio.to_thread(handle.flush)
    on_verifying()
    received = handle.tell()
    if release.size is not None and received != release.size:
        raise VerificationError(f"size mismatch: expected {release.size} bytes, got {received}")
    try:
        # commit_temp hashes the file once and refuses a mismatch: no second pass over a large model here.
        return await asyncio.to_thread(store.commit_temp, path, release.sha256)
    except DigestMismatch as exc:
        raise VerificationError(exc.message) from None


def _copy_file(uri: str, handle: BinaryIO, limit: int) -> None:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(f"file uri must be local: {redact(uri)}")
    copied = 0
    try:
        with Path(unquote(parts.path)).open("rb") as source:
            while chunk := source.read(_CHUNK):
                copied += len(chunk)
                if copied > limit:
                    raise VerificationError(f"{redact(uri)} is larger than {limit} bytes")
                handle.write(chunk)
    except FileNotFoundError:
        raise FetchError(f"file not found: {redact(uri)}") from None
    except OSError as exc:
        raise FetchError(f"cannot read {redact(uri)}: {exc.strerror}") from None


async def _download(uri: str, handle: BinaryIO, limit: int, policy: FetchPolicy) -> None:
    timeout = httpx.Timeout(policy.timeout, connect=min(policy.timeout, 30.0))
    last_error = ""
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, trust_env=True) as client:
        for attempt in range(1, policy.attempts + 1):
            try:
                complete = await _download_once(client, uri, handle, limit)
            except httpx.HTTPError as exc:
                last_error = _describe(exc)
                complete = False
            except FetchError as exc:
                if not exc.transient:
                    raise
                last_error = exc.message
                complete = False
            if complete:
                return
            log.warning(
                "download of %s interrupted at %d bytes (attempt %d of %d): %s",
                redact(uri),
                handle.tell(),
                attempt,
                policy.attempts,
                last_error or "connection closed early",
            )
            if attempt < policy.attempts:
                await asyncio.sleep(min(policy.backoff * 2 ** (attempt - 1), _MAX_BACKOFF))
    raise FetchError(
        f"download of {redact(uri)} failed after {policy.attempts} attempt(s) at {handle.tell()} bytes: "
        f"{last_error or 'connection closed early'}",
        transient=True,
    )


async def _download_once(client: httpx.AsyncClient, uri: str, handle: BinaryIO, limit: int) -> bool:
    """One request, resuming from what ``handle`` already holds. True when the whole body arrived."""
    offset = handle.tell()
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    async with client.stream("GET", uri, headers=headers) as response:
        if response.status_code == 416 and offset:
            return True  # nothing left to send: size and hash checks decide
        if response.status_code >= 400:
            transient = response.status_code in (408, 429) or response.status_code >= 500
            raise FetchError(f"GET {redact(uri)} returned HTTP {response.status_code}", transient=transient)
        if offset and response.status_code != 206:
            # The server ignored Range: start over.
            await asyncio.to_thread(_rewind, handle)
            offset = 0
        length = response.headers.get("Content-Length")
        expected_end = offset + int(length) if length and length.isdigit() else None
        if expected_end is not None and expected_end > limit:
            raise VerificationError(f"{redact(uri)} is {expected_end} bytes, over the {limit}-byte limit")
        async for chunk in response.aiter_raw():  # no chunk size: a buffered partial chunk dies with the connection
            if handle.tell() + len(chunk) > limit:
                raise VerificationError(f"{redact(uri)} is larger than {limit} bytes")
            await asyncio.to_thread(handle.write, chunk)
    return expected_end is None or handle.tell() >= expected_end


def _rewind(handle: BinaryIO) -> None:
    handle.seek(0)
    handle.truncate()


def _describe(exc: httpx.HTTPError) -> str:
    # httpx messages can quote the request URL, query included: name the error type instead.
    return f"{type(exc).__name__}: {str(exc).split('?')[0][:200]}" if str(exc) else type(exc).__name__
