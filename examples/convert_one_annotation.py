"""Kognic's "download and convert" use case, with annopull's drop-in client.

Below the import line, the code is kognic-io's as Kognic's documentation writes it: get one
scene's annotation, parse it into kognic-openlabel's ``OpenLabelAnnotation``, and convert it
into a format of your own (here: how many objects of each type). Only the import changed.

    python examples/convert_one_annotation.py SCENE_UUID ANNOTATION_TYPE

Credentials as kognic-io finds them (``KOGNIC_CREDENTIALS``, or ``KOGNIC_CLIENT_ID`` and
``KOGNIC_CLIENT_SECRET``). Prints the converted annotation as JSON.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

from _fakes import kognic_hosts
from kognic.openlabel.models import OpenLabelAnnotation

from annopull.compat.kognic_io import KognicIOClient  # was: from kognic.io.client import ...


def convert(annotation: OpenLabelAnnotation) -> dict[str, int]:
    """Your own format: the number of objects of each type."""
    objects = annotation.openlabel.objects or {}
    return dict(Counter(obj.type for obj in objects.values()))


def main(scene_uuid: str, annotation_type: str) -> None:
    client = KognicIOClient(**kognic_hosts())
    annotation = client.annotation.get_annotation(
        scene_uuid=scene_uuid, annotation_type=annotation_type
    )
    openlabel = OpenLabelAnnotation.model_validate(annotation.content)
    print(json.dumps({"scene_uuid": annotation.scene_uuid, "objects": convert(openlabel)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
