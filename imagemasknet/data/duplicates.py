"""Audit a BUSI copy: class counts, native image sizes, and groups of near-duplicate scans.

BUSI holds many re-exports of one ultrasound frame under different names, re-cropped, re-scaled
(×0.83, ×0.5 …) or with calipers and text added, and a few of them under two different labels.
Plain image hashes miss most re-cropped copies, so near-duplicates are found in two passes:

1. **Coarse search, all pairs.** Every image is shrunk to a fixed height, so copies that were
   re-scaled as a whole line up again, and high-pass filtered, so the bright-top / dark-bottom
   layout that all scans share stops counting as similarity. The central square of one image is
   then matched by normalised cross-correlation (NCC) against the other over a range of offsets
   and the scale changes a re-crop leaves behind; all pairs at once, as one matrix product.
2. **Speckle check, candidate pairs only.** Speckle is a fingerprint of one frame: copies share it,
   while a neighbouring frame of the same lesion does not, however alike the two look. The
   coarse match is refined at half resolution on high-passed pixels, over fine steps of offset
   and scale; a pair is a near-duplicate when this speckle NCC reaches ``SAME_FRAME_SCORE``.

Groups are the connected components of those pairs. A group whose members carry different labels
is a label conflict: the same scan was filed under two classes.

Its size (about 500 lines) is on purpose: the two passes, their shared image preparation, the thresholds
they were calibrated with and the index the app matches uploads against belong together.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from imagemasknet.core.files import atomic_write
from imagemasknet.core.paths import cache_dir
from imagemasknet.data.dataset import CLASSES, Arrays, Dataset, listing_fingerprint, load_arrays
from imagemasknet.data.decode import read_grey
from imagemasknet.data.splits import merge_groups

# Coarse search. Heights are in pixels after shrinking every image to CANONICAL_HEIGHT rows.
CANONICAL_HEIGHT = 32
COARSE_TEMPLATE = 16  # side of the central square that is looked for in the other image
COARSE_SHIFT_X, COARSE_SHIFT_Y = 8, 3  # offsets searched; lateral re-crops move images most
# A fixed height undoes whole-image re-scaling; a crop that also cuts rows leaves a scale change.
COARSE_SCALES = (0.8, 0.89, 1.0, 1.12, 1.25)
COARSE_BLUR = 1.5  # sigma of the blur that the high-pass removes
CANDIDATE_SCORE = 0.6  # coarse NCC a pair needs for the speckle check

# Speckle check, in pixels at half native resolution.
SPECKLE_TEMPLATE = 64
SPECKLE_SHIFT = 10  # covers the position error of one coarse pixel
SPECKLE_SCALE_STEPS = tuple(round(0.016 * k, 3) for k in range(-5, 6))  # covers the coarse scale step
SPECKLE_BLUR = 1.0
SPECKLE_CLIP = 2.5  # in standard deviations of the high-passed patch
SAME_FRAME_SCORE = 0.5


@dataclass(frozen=True)
class ClassCounts:
    images: int
    mask_files: int
    multi_mask_images: int
    empty_masks: int
    median_lesion_fraction: float  # of the image area, over images whose mask is not empty


@dataclass(frozen=True)
class SizeStats:
    """Native width and height in pixels, read from the file headers."""

    images: int
    width_min: int
    width_median: float
    width_max: int
    width_mean: float
    height_min: int
    height_median: float
    height_max: int
    height_mean: float


@dataclass(frozen=True)
class DuplicatePair:
    a: str
    b: str
    speckle_ncc: float
    coarse_ncc: float
    scale_b_vs_a: float  # lengths in b's pixels per length in a's pixels


@dataclass(frozen=True)
class DuplicateGroup:
    name: str
    ids: tuple[str, ...]
    labels: tuple[str, ...]
    label_conflict: bool


@dataclass
class AuditResult:
    counts: dict[str, ClassCounts]  # per class, plus "all"
    sizes: dict[str, SizeStats]  # per class, plus "all"
    pairs: list[DuplicatePair]
    groups: list[DuplicateGroup]

    @property
    def conflicts(self) -> list[DuplicateGroup]:
        return [g for g in self.groups if g.label_conflict]

    def to_json(self) -> dict:
        method = {"candidate_score": CANDIDATE_SCORE, "same_frame_score": SAME_FRAME_SCORE}
        return {**dataclasses.asdict(self), "method": method}


def audit(busi: Dataset, arrays: Arrays | None = None, progress: bool = False) -> AuditResult:
    """Count, measure and look for near-duplicates in ``busi``.

    ``arrays`` supplies the merged masks for the empty-mask and lesion-size counts; without it they
    are loaded (and cached) at 256 px. The duplicate search reads the image files itself, because
    speckle needs more resolution than training arrays keep.
    """
    if arrays is None:
        arrays = load_arrays(busi, 256, progress=progress)  # may drop unreadable cases from busi
    elif arrays.ids != busi.ids:
        arrays = arrays.take(busi.ids)
    pairs = find_duplicate_pairs(busi, progress=progress)
    return AuditResult(_class_counts(busi, arrays), _size_stats(busi), pairs, _group(busi, pairs))


def duplicate_groups(result: AuditResult) -> dict[str, str]:
    """Image id → name of its near-duplicate group, for images that have a copy."""
    return {i: g.name for g in result.groups for i in g.ids}


def _class_counts(busi: Dataset, arrays: Arrays) -> dict[str, ClassCounts]:
    area = arrays.masks.reshape(len(arrays.ids), -1).mean(axis=1)
    labels = np.array([c.label for c in busi.cases])
    n_masks = np.array([len(c.mask_paths) for c in busi.cases])
    counts = {}
    for name in (*CLASSES, "all"):
        rows = np.ones(len(labels), bool) if name == "all" else labels == name
        lesions = area[rows & (area > 0)]
        counts[name] = ClassCounts(
            images=int(rows.sum()),
            mask_files=int(n_masks[rows].sum()),
            multi_mask_images=int((n_masks[rows] > 1).sum()),
            empty_masks=int((area[rows] == 0).sum()),
            median_lesion_fraction=round(float(np.median(lesions)), 4) if len(lesions) else 0.0,
        )
    return counts


def _size_stats(busi: Dataset) -> dict[str, SizeStats]:
    sizes = {}
    for case in busi.cases:
        with Image.open(case.image_path) as image:  # opening reads the header only
            sizes[case.id] = image.size
    stats = {}
    for name in (*CLASSES, "all"):
        members = [sizes[c.id] for c in busi.cases if name in ("all", c.label)]
        if not members:
            continue
        widths, heights = [w for w, _ in members], [h for _, h in members]
        stats[name] = SizeStats(
            len(members),
            min(widths), statistics.median(widths), max(widths), round(statistics.fmean(widths), 1),
            min(heights), statistics.median(heights), max(heights), round(statistics.fmean(heights), 1),
        )
    return stats


def _group(busi: Dataset, pairs: list[DuplicatePair]) -> list[DuplicateGroup]:
    labels = {c.id: c.label for c in busi.cases}
    # Connected components of the pairs, in data-set order (each pair a grouping of its own).
    components = [m for m in merge_groups(list(busi.ids), *({p.a: "", p.b: ""} for p in pairs)) if len(m) > 1]
    return [
        DuplicateGroup(f"D{n:03d}", tuple(m), tuple(labels[i] for i in m), len({labels[i] for i in m}) > 1)
        for n, m in enumerate(components, start=1)
    ]


# --- near-duplicate search ---------------------------------------------------------------------


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, edges reflected.

    Plain numpy: the arrays are small, and on a busy machine torch's threaded kernels spend more
    time waiting for each other than computing.
    """
    radius = math.ceil(3 * sigma)
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps = (taps / taps.sum()).astype(np.float32)
    lead = [(0, 0)] * (x.ndim - 2)
    rows, cols = x.shape[-2:]
    padded = np.pad(x, lead + [(radius, radius), (0, 0)], mode="reflect")
    x = sum(w * padded[..., k:k + rows, :] for k, w in enumerate(taps))
    padded = np.pad(x, lead + [(0, 0), (radius, radius)], mode="reflect")
    return sum(w * padded[..., k:k + cols] for k, w in enumerate(taps))


def _high_pass(x: np.ndarray, sigma: float) -> np.ndarray:
    return x - _blur(x, sigma)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Zero mean, unit length along the last axis, so that a dot product is an NCC."""
    vectors = vectors - vectors.mean(-1, keepdims=True)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


@dataclass
class _Coarse:
    """One image's coarse features: its central square, and every window it is compared with.

    Positions are in pixels of the half-resolution image, with the size of one coarse pixel there.
    """

    template: np.ndarray  # (d,)
    template_at: tuple[float, float, float]  # x, y of the centre; pixels per coarse pixel
    windows: np.ndarray  # (n, d)
    windows_at: np.ndarray  # (n, 3) as template_at, one row per window


def _coarse_features(image: Image.Image) -> _Coarse:
    width, height = image.size
    side = COARSE_TEMPLATE
    windows, where = [], []
    for scale in COARSE_SCALES:
        rows = max(side, round(CANONICAL_HEIGHT / scale))
        cols = max(1, round(width * rows / height))
        step = height / rows
        grid = _high_pass(_pixels(image.resize((cols, rows), Image.Resampling.BILINEAR)), COARSE_BLUR)
        # Narrow scans are padded with zeros (the high-passed mean) so every window exists.
        pad_x = max(0, (side + 2 * COARSE_SHIFT_X - cols + 1) // 2)
        grid = np.pad(grid, ((0, 0), (pad_x, pad_x)))
        top, left = (rows - side) // 2, (grid.shape[1] - side) // 2
        if scale == 1.0:
            template = grid[top:top + side, left:left + side].reshape(-1)
            template_at = ((left - pad_x + side / 2) * width / cols, (top + side / 2) * step, step)
        y0, x0 = max(0, top - COARSE_SHIFT_Y), left - COARSE_SHIFT_X
        region = grid[y0:top + side + COARSE_SHIFT_Y, x0:left + side + COARSE_SHIFT_X]
        patches = np.lib.stride_tricks.sliding_window_view(region, (side, side))  # (ny, nx, side, side)
        ny, nx = patches.shape[:2]
        ys, xs = np.meshgrid(np.arange(ny) + y0, np.arange(nx) + x0, indexing="ij")
        windows.append(patches.reshape(-1, side * side))
        where.append(np.stack([
            (xs.reshape(-1) - pad_x + side / 2) * width / cols,
            (ys.reshape(-1) + side / 2) * step,
            np.full(ny * nx, step),
        ], axis=1))
    return _Coarse(_unit(template), template_at, _unit(np.concatenate(windows)), np.concatenate(where))


def _coarse_search(features: list[_Coarse]) -> tuple[torch.Tensor, torch.Tensor]:
    """NCC of every image's central square against every other image, and the best window's index.

    ``score[x, y]`` is the best match of x's square among y's windows.
    """
    n = len(features)
    longest = max(len(f.windows) for f in features)
    windows = torch.zeros(n, longest, features[0].windows.shape[1])
    for i, f in enumerate(features):
        windows[i, :len(f.windows)] = torch.from_numpy(f.windows)  # zero rows score 0 and never win
    templates = torch.from_numpy(np.stack([f.template for f in features]))
    score, best = torch.empty(n, n), torch.empty(n, n, dtype=torch.long)
    chunk = max(1, 2**22 // (longest * n))
    for start in range(0, n, chunk):
        block = windows[start:start + chunk]
        ncc = (templates @ block.reshape(-1, block.shape[-1]).T).view(n, len(block), longest)
        score[:, start:start + len(block)], best[:, start:start + len(block)] = ncc.max(dim=2)
    return score, best


def _patches(image: Image.Image, centre: tuple[float, float], steps: list[float], size: int) -> np.ndarray:
    """High-passed size×size samples of ``image`` around ``centre``, one per step (source pixels per sample).

    Overlays (calipers, boxes, text) and tissue edges are far brighter than speckle; clipping the
    high-passed values keeps them from deciding the correlation.
    """
    margin = math.ceil(3 * SPECKLE_BLUR)
    outer = size + 2 * margin
    reach = outer * max(steps) / 2 + 1
    left, top = math.floor(centre[0] - reach), math.floor(centre[1] - reach)
    right, bottom = math.ceil(centre[0] + reach), math.ceil(centre[1] + reach)
    inside = np.asarray(image.crop((max(left, 0), max(top, 0), min(right, image.width), min(bottom, image.height))))
    # Reflected borders stand in for pixels outside the scan; they match nothing in the other one.
    pad = ((max(0, -top), max(0, bottom - image.height)), (max(0, -left), max(0, right - image.width)))
    window = Image.fromarray(np.pad(inside, pad, mode="reflect"))
    x, y = centre[0] - left, centre[1] - top
    samples = [
        _pixels(window.resize((outer, outer), Image.Resampling.BILINEAR,
                              box=(x - outer * s / 2, y - outer * s / 2, x + outer * s / 2, y + outer * s / 2)))
        for s in steps
    ]
    high = _high_pass(np.stack(samples), SPECKLE_BLUR)[:, margin:-margin, margin:-margin]
    limit = SPECKLE_CLIP * high.reshape(len(steps), -1).std(axis=1).reshape(-1, 1, 1)
    return np.clip(high, -limit, limit)


def _window_sums(x: np.ndarray, side: int) -> np.ndarray:
    """Sum over every side×side window of (N, H, W), from an integral image."""
    table = np.pad(x.astype(np.float64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    return table[:, side:, side:] - table[:, :-side, side:] - table[:, side:, :-side] + table[:, :-side, :-side]


def _speckle_ncc(magnified: Image.Image, magnified_at: tuple[float, float], base: Image.Image,
                 base_at: tuple[float, float], ratio: float) -> tuple[float, float]:
    """Best speckle NCC of two scans around the spot the coarse search matched, and the refined ratio.

    Both images are at half resolution; ``magnified`` shows the tissue ``ratio`` (≥ 1) times as
    large as ``base``, and ``*_at`` are where the coarse search put the same spot in each. The
    comparison runs on the grid of ``base``, so ``magnified`` is only ever shrunk, which PIL's
    resampling filter anti-aliases.
    """
    side = SPECKLE_TEMPLATE
    # Put the template where both scans have pixels: the middle of their overlap, in base pixels.
    lo_x = max(0.0, base_at[0] - magnified_at[0] / ratio)
    hi_x = min(base.width, base_at[0] + (magnified.width - magnified_at[0]) / ratio)
    lo_y = max(0.0, base_at[1] - magnified_at[1] / ratio)
    hi_y = min(base.height, base_at[1] + (magnified.height - magnified_at[1]) / ratio)
    centre_x = min(max((lo_x + hi_x) / 2, side / 2), base.width - side / 2)
    centre_y = min(max((lo_y + hi_y) / 2, side / 2), base.height - side / 2)
    template = _unit(_patches(base, (centre_x, centre_y), [1.0], side).reshape(-1)).reshape(side, side)
    steps = [ratio * (1 + d) for d in SPECKLE_SCALE_STEPS]
    target = (magnified_at[0] + (centre_x - base_at[0]) * ratio, magnified_at[1] + (centre_y - base_at[1]) * ratio)
    search = _patches(magnified, target, steps, side + 2 * SPECKLE_SHIFT)
    # Correlation by FFT; a template padded at the far end cannot wrap round into the valid offsets.
    shape = search.shape[-2:]
    spectrum = np.fft.rfft2(search) * np.conj(np.fft.rfft2(template, s=shape))
    offsets = 2 * SPECKLE_SHIFT + 1
    numerator = np.fft.irfft2(spectrum, s=shape)[:, :offsets, :offsets]
    sums, squares = _window_sums(search, side), _window_sums(search**2, side)
    ncc = numerator / np.sqrt(np.maximum(squares - sums**2 / side**2, 1e-6))
    best = int(ncc.argmax())
    return float(ncc.flat[best]), steps[best // (offsets * offsets)]


def find_duplicate_pairs(busi: Dataset, progress: bool = False) -> list[DuplicatePair]:
    """Every pair of scans that are copies of one frame, with their scores (see the module notes)."""
    cases = busi.cases
    if len(cases) < 2:
        return []
    halves, features = [], []
    for case in _progress(cases, progress, "reading scans for the duplicate search"):
        halves.append(_half(Image.fromarray(read_grey(case.image_path))))
        features.append(_coarse_features(halves[-1]))
    score, best = _coarse_search(features)
    pairs = []
    pair_score = torch.maximum(score, score.T)
    candidates = torch.triu(pair_score >= CANDIDATE_SCORE, diagonal=1).nonzero().tolist()
    for x, y in _progress(candidates, progress, "checking speckle of candidate pairs"):
        ncc, scale_y_vs_x = _same_frame(score, best, features, halves, x, y)
        if ncc >= SAME_FRAME_SCORE:
            pairs.append(DuplicatePair(cases[x].id, cases[y].id, round(ncc, 3), round(float(pair_score[x, y]), 3),
                                       round(scale_y_vs_x, 3)))
    return pairs


def _same_frame(score: torch.Tensor, best: torch.Tensor, features: list[_Coarse], halves: list[Image.Image],
                x: int, y: int) -> tuple[float, float]:
    """The speckle NCC of images x and y where the coarse search matched them, and how much larger y
    shows the tissue than x."""
    # Orient the match: the template came from `t`, the matching window from `w`.
    t, w = (x, y) if score[x, y] >= score[y, x] else (y, x)
    tx, ty, t_step = features[t].template_at
    wx, wy, w_step = features[w].windows_at[best[t, w]].tolist()
    w_per_t = w_step / t_step  # how much larger w shows the tissue than t
    if w_per_t >= 1:
        ncc, ratio = _speckle_ncc(halves[w], (wx, wy), halves[t], (tx, ty), w_per_t)
        scale_w_vs_t = ratio
    else:
        ncc, ratio = _speckle_ncc(halves[t], (tx, ty), halves[w], (wx, wy), 1 / w_per_t)
        scale_w_vs_t = 1 / ratio
    return ncc, scale_w_vs_t if w == y else 1 / scale_w_vs_t


def _progress(items, enabled: bool, description: str):
    if not enabled:
        return items

    return tqdm(items, desc=description, unit="item")


# --- report ------------------------------------------------------------------------------------


def format_table(result: AuditResult) -> str:
    lines = ["Classes", f"{'class':<10}{'images':>8}{'mask files':>12}{'multi-mask':>12}{'empty masks':>13}{'median lesion':>15}"]
    for name, c in result.counts.items():
        lesion = f"{c.median_lesion_fraction:.1%}" if c.median_lesion_fraction else "-"
        lines.append(f"{name:<10}{c.images:>8}{c.mask_files:>12}{c.multi_mask_images:>12}{c.empty_masks:>13}{lesion:>15}")
    lines += ["", "Native image size (px)",
              f"{'class':<10}{'width min / median / max (mean)':>34}{'height min / median / max (mean)':>36}"]
    for name, s in result.sizes.items():
        width = f"{s.width_min} / {s.width_median:g} / {s.width_max} ({s.width_mean:g})"
        height = f"{s.height_min} / {s.height_median:g} / {s.height_max} ({s.height_mean:g})"
        lines.append(f"{name:<10}{width:>34}{height:>36}")
    in_groups = sum(len(g.ids) for g in result.groups)
    by_size: dict[int, int] = {}
    for group in result.groups:
        by_size[len(group.ids)] = by_size.get(len(group.ids), 0) + 1
    lines += ["", "Near-duplicates (same frame, by speckle)",
              f"pairs {len(result.pairs)}, groups {len(result.groups)}, images in groups {in_groups}, "
              f"redundant copies {in_groups - len(result.groups)}",
              "group sizes: " + (", ".join(f"{n} of {size}" for size, n in sorted(by_size.items())) or "none")]
    compositions: dict[str, int] = {}
    for group in result.groups:
        present = sorted(set(group.labels), key=CLASSES.index)
        key = " + ".join(present) if len(present) > 1 else f"{present[0]} only"
        compositions[key] = compositions.get(key, 0) + 1
    lines += [f"  {key:<22}{n:>5}" for key, n in sorted(compositions.items())]
    lines += ["", f"Label conflicts (one scan under several classes): {len(result.conflicts)}"]
    lines += [f"{g.name}  " + ", ".join(g.ids) for g in result.conflicts]
    return "\n".join(lines)


# --- one scan against a data set (provenance) ---------------------------------------------------------------


class DuplicateIndex:
    """A data set's scans, ready to say whether one more scan is (a near-duplicate of) one of them.

    An exact pixel copy is found by its hash. Otherwise the audit's two passes run in one direction: each
    indexed scan's central square is searched for in the new scan (the coarse pass, all scans at once),
    then the speckle check runs on the candidates, re-reading only those from disk. So a copy is found
    when it shows the middle of the original: re-saved, re-scaled, lightly cropped or annotated. The
    index keeps one small template per scan, about 1 KB, and is cached under the cache folder."""

    def __init__(self, busi: Dataset, progress: bool = False):
        self.cases = busi.cases
        path = cache_dir() / f"duplicate-index-{listing_fingerprint(busi)[:20]}-v1.npz"
        try:
            with np.load(path) as cached:
                if json.loads(str(cached["ids"])) != busi.ids:
                    raise ValueError("another data set")
                self.templates, self.template_at = cached["templates"], cached["template_at"]
                self.digests = dict(zip(json.loads(str(cached["digests"])), busi.ids))
                return
        except (OSError, ValueError, KeyError):
            pass  # no cache yet, or a damaged one: built below
        templates, where, digests = [], [], []
        for case in _progress(busi.cases, progress, "indexing the training scans"):
            pixels = read_grey(case.image_path)
            digests.append(_pixel_digest(pixels))
            coarse = _coarse_features(_half(Image.fromarray(pixels)))
            templates.append(coarse.template)
            where.append(coarse.template_at)
        self.templates, self.template_at = np.stack(templates).astype(np.float32), np.array(where, dtype=np.float64)
        self.digests = dict(zip(digests, busi.ids))

        atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), ids=json.dumps(busi.ids), digests=json.dumps(digests),
                                                templates=self.templates, template_at=self.template_at))

    def match(self, pixels: np.ndarray) -> DuplicatePair | None:
        """The indexed scan that ``pixels`` (uint8 H×W) copies, the best speckle match first; or None."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        exact = self.digests.get(_pixel_digest(pixels))
        if exact is not None:
            return DuplicatePair("upload", exact, 1.0, 1.0, 1.0)
        half = _half(Image.fromarray(pixels))
        query = _coarse_features(half)
        # In PyTorch, not NumPy: NumPy's OpenBLAS keeps threads of its own that fight the model's for two cores
        # (a whole predict took 136 ms instead of 31, benchmarks/latency.py).
        scores = (torch.from_numpy(self.templates) @ torch.from_numpy(query.windows.T.astype(np.float32))).numpy()
        best, found = scores.argmax(1), None
        for n in np.flatnonzero(scores.max(1) >= CANDIDATE_SCORE):
            tx, ty, t_step = self.template_at[n]
            wx, wy, w_step = query.windows_at[best[n]].tolist()
            original = _half(Image.fromarray(read_grey(self.cases[n].image_path)))
            w_per_t = w_step / t_step  # how much larger the upload shows the tissue than the original
            if w_per_t >= 1:
                ncc, _ = _speckle_ncc(half, (wx, wy), original, (tx, ty), w_per_t)
            else:
                ncc, _ = _speckle_ncc(original, (tx, ty), half, (wx, wy), 1 / w_per_t)
            if ncc >= SAME_FRAME_SCORE and (found is None or ncc > found.speckle_ncc):
                found = DuplicatePair("upload", self.cases[n].id, round(ncc, 3), round(float(scores[n].max()), 3),
                                      round(float(1 / w_per_t), 3))
        return found


def _pixel_digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes() + repr(pixels.shape).encode()).hexdigest()


def _half(image: Image.Image) -> Image.Image:
    return image.resize((max(1, round(image.width / 2)), max(1, round(image.height / 2))), Image.Resampling.BILINEAR)
