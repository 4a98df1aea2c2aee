"""annopull's own way: a whole batch into a zip in one call, resumable.

Where the drop-in clients keep a script's loop, ``client.kognic.download`` streams every
annotation straight into the output (zip, folder or JSON Lines) with a journal for
``resume=True``, and reports what arrived and what failed.

    python examples/bulk_download.py PROJECT BATCH ANNOTATION_TYPE out.zip

Settings come from the environment as for the command line (``ANNOPULL_KOGNIC_API_URL``,
``ANNOPULL_ENGINE_CONCURRENCY``, ...); credentials as kognic-io finds them.
"""

from __future__ import annotations

import asyncio
import json
import sys

import annopull


async def main(project: str, batch: str, annotation_type: str, output: str) -> int:
    async with annopull.Client.from_config() as client:
        report = await client.kognic.download(
            project,
            annotation_type,
            batch=batch,
            sink=annopull.sink_for(output),
            resume=True,
        )
    print(json.dumps({"downloaded": report.downloaded, "failed": len(report.failures)}))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:5])))
