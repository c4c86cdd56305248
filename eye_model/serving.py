"""A client of a running model server: score image files through ``/invocations``.

The model server itself (``mlflow models serve``) is started by ``eye-model serve`` and
``eye-model stack up``; its command line and processes live in :mod:`eye_model.stack`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path


def score_files(
    url: str, paths: Sequence[Path], *, timeout: float = 60.0
) -> list[dict[str, object]]:
    """POST image files to a model server's ``/invocations`` and return its rows.

    Args:
        url: base URL of the model server (``http://127.0.0.1:8080``).
        paths: image files; only their contents are sent, under their row number.
        timeout: request timeout in seconds.

    Returns:
        One prediction dict per file, in order.

    Raises:
        RuntimeError: the server answered anything but 200.
    """
    import requests

    rows = [
        [str(i), base64.b64encode(Path(path).read_bytes()).decode("ascii")]
        for i, path in enumerate(paths)
    ]
    payload = {"dataframe_split": {"columns": ["image_id", "image"], "data": rows}}
    response = requests.post(f"{url.rstrip('/')}/invocations", json=payload, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
    return list(response.json()["predictions"])
