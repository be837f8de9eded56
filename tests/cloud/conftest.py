from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def write_sensor_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """Device telemetry with a string category column, missing values, a constant and an ID column."""
    rng = np.random.default_rng(seed)
    temperature = rng.normal(20, 5, rows).round(2)
    vibration = rng.gamma(2.0, 0.01, rows).round(4)
    site = rng.choice(["north", "south", "east"], rows).astype(object)
    failing = (temperature > 23) | ((site == "east") & (vibration > 0.02))
    frame = pd.DataFrame(
        {
            "device_id": [f"dev-{i:04d}" for i in range(rows)],
            "firmware": "1.0.3",
            "temperature": temperature,
            "vibration": vibration,
            "site": site,
            "status": np.where(failing, "fail", "ok"),
        }
    )
    frame.loc[::13, "temperature"] = np.nan
    frame.loc[5::17, "site"] = None
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def sensor_csv(tmp_path: Path) -> Path:
    return write_sensor_csv(tmp_path / "sensors.csv")
