"""The CPU-heavy transform ``bench_transform.py`` runs: OpenLABEL cuboids to box corners.

A real conversion of the kind users write: every cuboid of every frame becomes its eight
corners in the ego frame (yaw rotation, translation), its footprint area, volume and
distance, in pure Python (what holds the GIL), repeated ``_PASSES`` times so that one
document of the fake's (~4 KiB, ~15 objects) costs about 10 ms.
"""

from __future__ import annotations

import math
from typing import Any

_PASSES = 12


def convert(annotation: Any) -> dict[str, Any]:
    """The scene's boxes: per object its class, corners, footprint, volume and range."""
    openlabel = annotation.content["openlabel"]
    names = {key: entry["type"] for key, entry in openlabel["objects"].items()}
    boxes: dict[str, Any] = {}
    for frame in openlabel["frames"].values():
        for key, data in frame["objects"].items():
            for cuboid in data["object_data"]["cuboid"]:
                for _ in range(_PASSES):
                    box = _box(cuboid["val"])
                boxes[key] = {"class": names.get(key, "unknown"), **box}
    return {"scene": annotation.scene_uuid, "boxes": boxes}


def _box(val: list[float]) -> dict[str, Any]:
    x, y, z, _qx, _qy, qz, qw, sx, sy, sz = (
        abs(v) + 0.1 if i >= 7 else v for i, v in enumerate(val)
    )
    yaw = 2.0 * math.atan2(qz, qw)
    cos, sin = math.cos(yaw), math.sin(yaw)
    corners = []
    for dx in (-0.5, 0.5):
        for dy in (-0.5, 0.5):
            for dz in (-0.5, 0.5):
                px, py = dx * sx, dy * sy
                corners.append(
                    (
                        round(x + cos * px - sin * py, 3),
                        round(y + sin * px + cos * py, 3),
                        round(z + dz * sz, 3),
                    )
                )
    return {
        "corners": corners,
        "footprint": round(sx * sy, 3),
        "volume": round(sx * sy * sz, 3),
        "range": round(math.sqrt(x * x + y * y + z * z), 3),
    }
