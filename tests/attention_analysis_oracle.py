"""Float64 NumPy oracles for the attention analyses, written from the papers' formulas (protocols.md
sections 1 and 5) one image at a time, with the papers' own loops where they have them (Teaching
Matters' canvas pasting and offset, its sort-and-cumsum thresholding, PIL for the mask grid)."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
from PIL import Image

from vitjax.capture import TokenLayout


def patch_rows(attn: np.ndarray, layout: TokenLayout, eps: float = 0.0) -> np.ndarray:
    """(H, Q, K) of one image's (H, N, N): prefix queries and keys dropped, rows renormalised."""
    p = layout.num_prefix
    rows = np.asarray(attn, np.float64)[:, p:, p:].copy()
    if eps:
        rows += eps
    for h in range(rows.shape[0]):
        for q in range(rows.shape[1]):
            total = rows[h, q].sum()
            rows[h, q] = rows[h, q] / total if total != 0 else 0.0
    return rows


def coordinates(layout: TokenLayout, units: str) -> np.ndarray:
    gh, gw = layout.grid
    out = []
    for index in range(gh * gw):
        row, col = index // gw, index % gw
        if units == "pixels":
            out.append((row * layout.patch_size[0], col * layout.patch_size[1]))
        else:
            out.append((row / (gh - 1), col / (gw - 1)))
    return np.array(out, np.float64)


def distance(attn, layout, units):
    """(H,) Teaching Matters (unit square, no eps) or cl-vs-mim (pixels, +1e-32)."""
    rows = patch_rows(attn, layout, 1e-32 if units == "pixels" else 0.0)
    yx = coordinates(layout, units)
    d = np.sqrt(((yx[:, None, :] - yx[None, :, :]) ** 2).sum(-1))
    return (rows * d[None]).sum(-1).mean(-1)


def entropy(attn, layout):
    rows = patch_rows(attn, layout)
    out = np.zeros(rows.shape[:2])
    for h in range(rows.shape[0]):
        for q in range(rows.shape[1]):
            if rows[h, q].sum() > 0:
                out[h, q] = scipy.stats.entropy(rows[h, q])  # natural log
    return out.mean(-1)


def nmi(attn, layout, eps=1e-8):
    """cl-vs-mim's `calculate_nmi` on one image's rows (H, Q, K)."""
    rows = patch_rows(attn, layout, eps)
    _, q, _ = rows.shape
    pq = np.full(q, 1.0 / q)
    pk = (rows * pq[None, :, None]).sum(1)
    mi = (rows * pq[None, :, None] * np.log(rows / pk[:, None, :])).sum((1, 2))
    eq = -(pq * np.log(pq)).sum()
    ek = -(pk * np.log(pk)).sum(-1)
    return mi / np.sqrt(eq * ek)


def _cosine(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def collapse(attn, layout):
    """(query similarity (H,), head similarity ()) by explicit pairs."""
    p = layout.num_prefix
    rows = np.asarray(attn, np.float64)[:, p:, p:]
    heads, queries, _ = rows.shape
    by_query = np.array([np.mean([_cosine(rows[h, i], rows[h, j]) for i in range(queries) for j in range(queries)
                                  if i != j]) for h in range(heads)])
    by_head = np.mean([np.mean([_cosine(rows[g, q], rows[h, q]) for g in range(heads) for h in range(heads) if g != h])
                       for q in range(queries)]) if heads > 1 else np.nan
    return by_query, by_head


def received(attn, layout):
    """{kind: (H,)} mean over the kind's keys of the mean over all queries, plus 'received' and 'patch_max'."""
    r = np.asarray(attn, np.float64).mean(1)  # (H, N)
    kinds = np.array(layout.kinds)
    out = {"received": r, "patch_max": r[:, kinds == "patch"].max(-1)}
    for kind in ("class", "dist", "register", "patch"):
        if (kinds == kind).any():
            out[f"received_{kind}"] = r[:, kinds == kind].mean(-1)
    return out


def cls_map(attn, layout):
    return np.asarray(attn, np.float64)[:, 0, layout.num_prefix:].reshape(-1, *layout.grid)


def aaam_sum(attn, layout):
    """Teaching Matters' paste loop for one image: (H, 2gh-1, 2gw-1) summed over queries."""
    gh, gw = layout.grid
    rows = patch_rows(attn, layout).reshape(attn.shape[0], gh * gw, gh, gw)
    canvas = np.zeros((attn.shape[0], 2 * gh - 1, 2 * gw - 1))
    for index in range(gh * gw):
        i, j = index // gw, index % gw
        canvas[:, gh - i - 1:gh - i - 1 + gh, gw - j - 1:gw - j - 1 + gw] += rows[:, index]
    return canvas


def offset(canvas):
    """Teaching Matters' `average_att_offset` for one (ch, cw) map -> (d, cx, cy)."""
    ch, cw = canvas.shape
    dtx = np.zeros((ch, cw))
    dty = np.zeros((ch, cw))
    for c in range(cw):
        dtx[:, c] = 2 * c / (cw - 1) - 1
    for r in range(ch):
        dty[r, :] = 2 * r / (ch - 1) - 1
    att = canvas / canvas.sum() if canvas.sum() > 0 else canvas
    cx, cy = (att * dtx).sum(), (att * dty).sum()
    return np.linalg.norm([cx, cy]), cx, cy


def pil_token_mask(mask, grid):
    """PIL's bicubic resize of the 8-bit mask to the grid, > 0 (`prep_token_masks`)."""
    image = Image.fromarray(np.round(np.clip(mask, 0, 1) * 255).astype(np.uint8))
    return np.array(image.resize((grid[1], grid[0]), Image.BICUBIC)) > 0


def saliency_iou(attn, layout, mask, mode="cls", mass=0.6):
    """(H + 1,) IoU per head and for the heads' summed map (`att_to_binary_mask` + `iou_score`), or None
    for an image with no foreground on the grid."""
    gh, gw = layout.grid
    p = layout.num_prefix
    gt = pil_token_mask(mask, layout.grid).ravel()
    if not gt.any():
        return None
    attn = np.asarray(attn, np.float64)
    if mode == "cls":
        maps = attn[:, 0, p:]
    elif mode == "spatial_sum":
        maps = attn[:, p:, p:].sum(1)
    else:
        centre = (math.ceil(gh / 2) - 1) * gw + math.ceil(gw / 2) - 1
        maps = attn[:, p + centre, p:]
    maps = np.concatenate([maps, maps.sum(0, keepdims=True)])
    out = []
    for m in maps:
        m = m / m.sum() if m.sum() > 0 else m
        order = np.argsort(m, kind="stable")
        keep_sorted = np.cumsum(m[order]) > 1 - mass
        keep = np.zeros_like(keep_sorted)
        keep[order] = keep_sorted
        out.append((keep & gt).sum() / (keep | gt).sum())
    return np.array(out)
