"""Kognic's "download and save to a zip" use case, with annopull's drop-in client.

Below the import line, the code is kognic-io's as Kognic's documentation writes it: every
annotation of a batch, each written as ``{scene_uuid}.json`` into a zip built in a BytesIO,
then saved. Only the import changed: the contents are now fetched concurrently while the
loop runs.

    python examples/save_batch_to_zip.py PROJECT BATCH ANNOTATION_TYPE annotations.zip
"""

from __future__ import annotations

import json
import sys
import zipfile
from io import BytesIO

from _fakes import kognic_hosts

from annopull.compat.kognic_io import KognicIOClient  # was: from kognic.io.client import ...


def main(project: str, batch: str, annotation_type: str, output: str) -> None:
    client = KognicIOClient(**kognic_hosts())
    annotations = client.annotation.get_project_annotations(
        project=project, batch=batch, annotation_type=annotation_type
    )
    zip_buffer = BytesIO()
    with zipfile.ZipFile(zip_buffer, "w", zipfile.ZIP_DEFLATED) as zip_file:
        for annotation in annotations:
            zip_file.writestr(f"{annotation.scene_uuid}.json", json.dumps(annotation.content))
    with open(output, "wb") as f:
        f.write(zip_buffer.getvalue())
    print(f"saved {output}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
