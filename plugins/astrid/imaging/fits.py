"""FITS + WCS I/O (placeholder: load_triplet follows)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from astropy.io import fits

from astrid.storage import to_path

__all__ = ["write_image"]


def write_image(path: Any, data: np.ndarray, header: fits.Header | None = None) -> Any:
    """Write ``data`` (2-D) as a float32 primary-HDU FITS file at ``path`` (str, ``pathlib`` or
    ``UPath``, including ``s3://``); returns the path written."""
    path = to_path(path)
    array = np.asarray(data, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"write_image expects a 2-D image, got shape {array.shape}")
    hdu = fits.PrimaryHDU(data=array, header=header.copy() if header is not None else None)
    buffer = io.BytesIO()
    hdu.writeto(buffer, output_verify="silentfix")
    with path.open("wb") as f:
        f.write(buffer.getvalue())
    return path
