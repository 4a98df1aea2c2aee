"""The drop-in client for async applications: AsyncKognicIOClient.

The same methods as KognicIOClient, as coroutines and an async generator, on the caller's
event loop (no thread). Here: every annotation of a batch, reduced to its number of
objects while the contents are fetched concurrently, and one scene's annotation.

    python examples/async_client.py PROJECT BATCH ANNOTATION_TYPE

Prints ``{"objects": {scene_uuid: count, ...}, "first": {...}}`` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from _fakes import kognic_hosts

from annopull.compat.kognic_io import AsyncKognicIOClient


async def main(project: str, batch: str, annotation_type: str) -> None:
    async with AsyncKognicIOClient(**kognic_hosts()) as client:
        counts = {}
        annotations = client.annotation.get_project_annotations(
            project=project, batch=batch, annotation_type=annotation_type
        )
        async for annotation in annotations:
            counts[annotation.scene_uuid] = len(annotation.content["openlabel"]["objects"])
        first = min(counts)
        single = await client.annotation.get_annotation(first, annotation_type)
    print(
        json.dumps(
            {
                "objects": counts,
                "first": {"scene_uuid": single.scene_uuid, "created": single.created.isoformat()},
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
