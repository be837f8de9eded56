"""The version sweep's choice is what the image and the tests run (no timing here: benchmarks/sweep.py measures)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.sweep import BEST, CANDIDATES

ROOT = Path(__file__).resolve().parent.parent


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = version.strip()
    return pins


def test_the_locks_pin_the_fastest_measured_versions() -> None:
    for lock in ("edge.lock", "dev.lock"):
        pins = _pins(ROOT / "requirements" / lock)
        chosen = {package: pins.get(package) for package in BEST}
        assert chosen == BEST, f"requirements/{lock} differs from the sweep's choice (benchmarks/sweep.py BEST)"


def test_every_choice_was_a_measured_candidate() -> None:
    assert set(BEST) == set(CANDIDATES)
    for package, version in BEST.items():
        assert version in CANDIDATES[package]
        assert len(CANDIDATES[package]) >= 2, f"{package}: a sweep needs alternatives"


def test_the_images_install_from_the_edge_lock() -> None:
    for dockerfile in ("Dockerfile.amd64", "Dockerfile.arm64"):
        assert "requirements/edge.lock" in (ROOT / dockerfile).read_text()
