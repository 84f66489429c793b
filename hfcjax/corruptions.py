"""The 15 common corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019) with the parameters
of its generator for 32x32 images (`make_cifar_c.py` in hendrycks/robustness), not
ImageNet-C's, in numpy/scipy/Pillow on batches of uint8 images ``[N, H, W, C]`` (C = 1 or
3; grey images go through the same definitions, their one channel standing for R = G = B).

`corrupt(images, name, severity, seed)` returns uint8 images of the same shape, the same for
the same images and seed (one `numpy.random.Generator` per corruption and severity). As in
the generator, every definition works on the uint8 image, returns values in [0, 255] and is
truncated to uint8. Where the generator calls another library, the same operation is written
here and its test holds it against an independent reference:

- skimage's `gaussian` is scipy's `gaussian_filter` over H and W (mode 'nearest');
  `random_noise(mode='s&p')` flips each value with probability `amount`, half to 1, half to 0;
  `rgb2hsv`/`hsv2rgb` are matplotlib's.
- cv2's `filter2D`/`GaussianBlur`/`warpAffine` border (reflect-101) is scipy's 'mirror';
  its RGB->grey is 0.299 R + 0.587 G + 0.114 B.
- ImageMagick's motion blur (motion blur, snow) is the one-sided Gaussian line kernel of
  width 2 radius + 1 along the angle with edge pixels repeated, as the `imagecorruptions`
  package reimplements it; its 8-bit PNG round trip rounds.
- glass blur's "swap" in the generator is a tuple assignment of numpy views, which copies the
  neighbour's pixel and leaves the neighbour as it was; so does this one (CIFAR-10-C as published).
- frost overlays crops of the generator's frost pictures (only the first five are ever drawn),
  read from the `imagecorruptions` package's data (installed without its dependencies by
  ``./run.sh``); cv2's bilinear resize by 0.2 is written out.

Images of another size than 32x32 use the same parameters with the sizes in the definitions
(glass blur's loop, the fog fractal, the elastic grid) taken from the image.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from hfcjax.errors import UserError

NAMES = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
         "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)

# make_cifar_c.py's parameters, severity 1..5.
PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": tuple(tuple(np.arange(1, top, 0.01)) for top in (1.06, 1.11, 1.16, 1.21, 1.26)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}
GREY = np.array([0.299, 0.587, 0.114])


def corrupt(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """`images` (uint8 ``[N, H, W, C]``) with corruption `name` at `severity` (1..5)."""
    if name not in PARAMETERS:
        raise UserError(f"unknown corruption {name!r}; the 15 of CIFAR-10-C are {list(NAMES)}.")
    if severity not in SEVERITIES:
        raise UserError(f"corruption severity must be one of {list(SEVERITIES)}, got {severity!r}.")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"corruptions take uint8 images [N, H, W, 1 or 3], got {images.dtype} {images.shape}.")
    rng = np.random.default_rng([seed, NAMES.index(name), severity])
    out = _FUNCTIONS[name](images, PARAMETERS[name][severity - 1], rng)
    return np.uint8(np.clip(out, 0, 255))  # the generator's np.uint8: truncation


_unit = lambda images: images.astype(np.float64) / 255.0  # noqa: E731


def _gaussian(x, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian of each image and channel (over H and W)."""
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


_grey = lambda x: x[..., 0] if x.shape[-1] == 1 else x @ GREY  # noqa: E731


def gaussian_noise(images, c, rng):
    x = _unit(images)
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(images, c, rng):
    return np.clip(rng.poisson(_unit(images) * c) / c, 0, 1) * 255


def impulse_noise(images, c, rng):
    x = _unit(images)
    flipped = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(flipped, np.where(salt, 1.0, 0.0), x) * 255


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """The generator's antialiased disk kernel (cv2.GaussianBlur of an aliased disk)."""
    half, ksize = (8, 3) if radius <= 8 else (int(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    kernel = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    kernel /= kernel.sum()
    taps = np.arange(ksize) - ksize // 2
    g = np.exp(-taps ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    return ndimage.correlate1d(ndimage.correlate1d(kernel, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")


def defocus_blur(images, c, rng):
    kernel = disk(*c)[None, :, :, None]
    return np.clip(ndimage.correlate(_unit(images), kernel, mode="mirror"), 0, 1) * 255


def glass_blur(images, c, rng):
    sigma, delta, iterations = c
    n, h, w, _ = images.shape
    x = np.uint8(_gaussian(_unit(images), sigma) * 255)
    rows = np.arange(n)
    for _ in range(iterations):
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2, n))
                x[rows, i, j] = x[rows, i + dy, j + dx]  # the generator's "swap" (see the module docstring)
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def line_blur(image: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion blur of one image ``[H, W, C]`` (any range): the weights
    exp(-i^2 / 2 sigma^2), i = 0..2 radius, normalised, along `angle` degrees, edges repeated."""
    width = 2 * int(radius) + 1
    weights = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    h, w = image.shape[:2]
    sin, cos = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    out = np.zeros(image.shape, np.float64)
    for i, weight in enumerate(weights):
        dy, dx = -math.ceil(i * sin - 0.5), -math.ceil(i * cos - 0.5)
        if abs(dy) >= h or abs(dx) >= w:
            break
        rows, cols = np.clip(np.arange(h) - dy, 0, h - 1), np.clip(np.arange(w) - dx, 0, w - 1)
        out += weight * image[rows][:, cols]
    return out


def motion_blur(images, c, rng):
    angles = rng.uniform(-45, 45, size=len(images))
    return np.stack([np.round(line_blur(image.astype(np.float64), c[0], c[1], a)) for image, a in zip(images, angles)])


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre of each image ``[N, H, W, C]`` zoomed by `factor` (bilinear) and cropped back."""
    h, w = x.shape[1:3]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = _zoom_axis(_zoom_axis(x[:, top:top + ch, left:left + cw], factor, 1), factor, 2)
    trim_top, trim_left = (zoomed.shape[1] - h) // 2, (zoomed.shape[2] - w) // 2
    return zoomed[:, trim_top:trim_top + h, trim_left:trim_left + w]


def _zoom_axis(x: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """scipy.ndimage.zoom(order=1) along one axis: round(n * factor) samples at i (n - 1) / (m - 1)."""
    n = x.shape[axis]
    m = int(round(n * factor))
    src = np.arange(m) * ((n - 1) / (m - 1)) if m > 1 else np.zeros(1)
    low = np.minimum(np.floor(src).astype(int), n - 1)
    high, frac = np.minimum(low + 1, n - 1), src - low
    shape = [1] * x.ndim
    shape[axis] = m
    frac = frac.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


def zoom_blur(images, c, rng):
    x = _unit(images).astype(np.float32)
    out = np.zeros_like(x)
    for factor in c:
        out += clipped_zoom(x, factor)
    return np.clip((x + out) / (len(c) + 1), 0, 1) * 255


def snow(images, c, rng):
    x = _unit(images).astype(np.float32)
    n, h, w, _ = x.shape
    layer = clipped_zoom(rng.normal(size=(n, h, w, 1), loc=c[0], scale=c[1]), c[2])
    layer[layer < c[3]] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8).astype(np.float64)  # the 8-bit PNG handed to ImageMagick
    angles = rng.uniform(-135, -45, size=n)
    layer = np.stack([np.round(line_blur(image, c[4], c[5], a)) for image, a in zip(layer, angles)]) / 255.0
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _grey(x)[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


def resize_linear(image: np.ndarray, scale: float) -> np.ndarray:
    """cv2.resize(image, (0, 0), fx=scale, fy=scale) with INTER_LINEAR (no antialiasing)."""
    h, w = image.shape[:2]
    out_h, out_w = int(round(h * scale)), int(round(w * scale))

    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) / scale - 0.5, 0, n_in - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, n_in - 1), src - low

    (r0, r1, fr), (c0, c1, fc) = axis(out_h, h), axis(out_w, w)
    image = image.astype(np.float64)
    rows = image[r0] * (1 - fr)[:, None, None] + image[r1] * fr[:, None, None]
    return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


@functools.lru_cache(maxsize=1)
def frost_pictures():
    """The generator's frost pictures, resized by 0.2, as float RGB arrays."""
    from PIL import Image

    spec = importlib.util.find_spec("imagecorruptions")  # its data only: the package itself needs cv2 and skimage
    folder = Path(spec.submodule_search_locations[0]) / "frost" if spec and spec.submodule_search_locations else None
    names = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
    if folder is None or not all((folder / n).is_file() for n in names):
        raise UserError("the frost corruption overlays the frost pictures of the imagecorruptions package: "
                        "pip install --no-deps imagecorruptions==1.1.2 (./run.sh does), or leave frost out of "
                        "config.evals.corruptions.corruptions.")
    return [resize_linear(np.asarray(Image.open(folder / n).convert("RGB")), 0.2) for n in names]


def frost(images, c, rng):
    pictures = frost_pictures()
    n, h, w, channels = images.shape
    out = np.empty(images.shape, np.float64)
    for k in range(n):
        picture = pictures[rng.integers(5)]
        top, left = rng.integers(0, picture.shape[0] - h), rng.integers(0, picture.shape[1] - w)
        crop = np.round(picture[top:top + h, left:left + w])  # cv2 keeps uint8
        out[k] = c[0] * images[k] + c[1] * (crop if channels == 3 else (crop @ GREY)[..., None])
    return np.clip(out, 0, 255)


def plasma_fractal(size: int, decay: float, rng) -> np.ndarray:
    """The generator's diamond-square height map, ``[size, size]`` in [0, 1] (size a power of 2)."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    mean = lambda a: a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)
    while step >= 2:
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[step // 2:size:step, step // 2:size:step] = mean(square)
        centre = grid[step // 2:size:step, step // 2:size:step]
        corners = grid[0:size:step, 0:size:step]
        left = centre + np.roll(centre, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        grid[0:size:step, step // 2:size:step] = mean(left)
        top = centre + np.roll(centre, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        grid[step // 2:size:step, 0:size:step] = mean(top)
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def fog(images, c, rng):
    x = _unit(images)
    h, w = x.shape[1:3]
    size = 1 << (max(h, w) - 1).bit_length()  # the generator's 32 for 32x32 (a power of 2)
    out = np.empty_like(x)
    for k in range(len(x)):
        peak = x[k].max()
        fogged = x[k] + c[0] * plasma_fractal(size, c[1], rng)[:h, :w, None]
        out[k] = np.clip(fogged * peak / (peak + c[0]), 0, 1)
    return out * 255


def brightness(images, c, rng):
    from matplotlib import colors

    x = _unit(images)
    if x.shape[-1] == 1:
        return np.clip(x + c, 0, 1) * 255  # grey: V is the value itself
    hsv = colors.rgb_to_hsv(x)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(colors.hsv_to_rgb(hsv), 0, 1) * 255


def contrast(images, c, rng):
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(images, c, rng):
    x = _unit(images).astype(np.float32)
    n, h, w, channels = x.shape
    c = [v * min(h, w) for v in c]  # the generator's IMSIZE * fraction
    centre, half = np.float32([h, w]) // 2, min(h, w) // 3
    src = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(x)
    for k in range(n):
        dst = src + rng.uniform(-c[2], c[2], size=src.shape).astype(np.float32)
        affine = np.linalg.solve(np.c_[dst, np.ones(3)], np.c_[src, np.ones(3)])[:, :2].T  # dst (x, y) -> src
        sx, sy = affine @ np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])
        warped = np.stack([ndimage.map_coordinates(x[k, ..., ch], [sy, sx], order=1, mode="mirror").reshape(h, w)
                           for ch in range(channels)], -1)
        dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), c[1], mode="reflect", truncate=3) * c[0])
        dy = (ndimage.gaussian_filter(rng.uniform(-1, 1, size=(h, w)), c[1], mode="reflect", truncate=3) * c[0])
        coords = [(yy + dy.astype(np.float32)).ravel(), (xx + dx.astype(np.float32)).ravel()]
        out[k] = np.stack([ndimage.map_coordinates(warped[..., ch], coords, order=1, mode="reflect").reshape(h, w)
                           for ch in range(channels)], -1)
    return np.clip(out, 0, 1) * 255


def _pil_each(images, transform):
    from PIL import Image

    grey = images.shape[-1] == 1
    out = [np.asarray(transform(Image.fromarray(image[..., 0] if grey else image))) for image in images]
    return np.stack(out)[..., None] if grey else np.stack(out)


def pixelate(images, c, rng):
    from PIL import Image

    h, w = images.shape[1:3]
    small = (int(w * c), int(h * c))
    return _pil_each(images, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX)).astype(np.float64)


def jpeg_compression(images, c, rng):
    from PIL import Image

    def roundtrip(im):
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=c)
        return Image.open(buffer)

    return _pil_each(images, roundtrip).astype(np.float64)


_FUNCTIONS = {name: globals()[name] for name in NAMES}
