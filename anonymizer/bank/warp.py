"""Piecewise-affine warp: move an image so its points land on other points, triangle by triangle.

Destination-driven: each output pixel finds its triangle (a label map rasterised from the destination
triangles), maps through that triangle's affine transform to the source, and is sampled bilinearly
(cv2.remap), so the output has no holes and every pixel is sampled exactly once.
"""

from __future__ import annotations

import cv2
import numpy as np


def warp(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, triangles: np.ndarray,
         out_shape: tuple[int, int], offset: tuple[float, float] = (0.0, 0.0),
         border: int = cv2.BORDER_REFLECT101) -> tuple[np.ndarray, np.ndarray]:
    """(warped image of `out_shape`, bool coverage): `src` moved so `src_pts` land on `dst_pts`, the output
    window starting at `offset` (x, y) in destination coordinates. Pixels outside every triangle are 0 and
    not covered."""
    h, w = out_shape
    s = np.asarray(src_pts, np.float64)
    d = np.asarray(dst_pts, np.float64) - np.asarray(offset, np.float64)
    labels = np.full((h, w), -1, np.int32)
    tris = np.asarray(triangles)
    a = np.concatenate([d[tris], np.ones((len(tris), 3, 1))], axis=2)  # per triangle: dst (x, y, 1) rows
    ok = np.abs(np.linalg.det(a)) >= 1e-9  # a collapsed triangle covers no pixel
    mats = np.zeros((len(tris), 2, 3), np.float64)
    if ok.any():
        mats[ok] = np.linalg.solve(a[ok], s[tris[ok]]).transpose(0, 2, 1)  # dst (x, y, 1) → src (x, y)
    corners = np.round(d[tris] * 16).astype(np.int32)
    for t in np.flatnonzero(ok):
        cv2.fillConvexPoly(labels, corners[t], int(t), lineType=cv2.LINE_8, shift=4)
    covered = labels >= 0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    m = mats[np.maximum(labels, 0)]
    map_x = (m[..., 0, 0] * xx + m[..., 0, 1] * yy + m[..., 0, 2]).astype(np.float32)
    map_y = (m[..., 1, 0] * xx + m[..., 1, 1] * yy + m[..., 1, 2]).astype(np.float32)
    out = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=border)
    out[~covered] = 0
    return out, covered
