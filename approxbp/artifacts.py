"""Writing generated files: atomically (readers never see half a file), figures and JSON alike.

Standard library only (matplotlib is imported by ``save_figure`` when it runs), so the fitter can use it without
importing torch.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    data = text.encode() if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, document: dict) -> None:
    """``document`` as indented JSON with a final newline, written atomically."""
    write_atomic(path, json.dumps(document, indent=1) + "\n")


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Render ``fig`` in the format of ``path``'s suffix (png by default), close it, and write the file atomically."""
    import matplotlib.pyplot as plt

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
