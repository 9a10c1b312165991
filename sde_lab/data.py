"""Datasets behind one interface: embedded digits, analytic toy sets, and TFDS images.

Every dataset yields, for global step k, the same global batch on every machine and after
every restart: example positions [k B, (k+1) B) of an endless stream of per-epoch
permutations drawn from (seed, epoch). Each process reads only its slice of that batch,
so per-host sharding needs no communication and a resumed run sees the data order of an
uninterrupted one.

Images are stored as integers k in [0, L-1] (L = `num_levels`: 17 for the scikit-learn
digits, 256 for 8-bit images) and scaled by `Scaler` to the model's input range.
TFDS datasets are read with `tfds.data_source` (array_record files, no TensorFlow). A
dataset that is not prepared fails at once with the command that prepares it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from typing import Iterator, Protocol

import numpy as np

from sde_lab.analytic import GaussianMixture

TOY_SETS = ("gmm", "checkerboard", "moons", "outliers")
TOY_EVAL_SIZE = 4096   # a toy set's eval split: this many draws of a fixed seed


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Integer levels k in [0, L-1] <-> model inputs.

    Without dequantization y = k / (L - 1); with it y = (k + u) / L, u ~ U[0, 1). Centered
    data is then mapped to 2 y - 1. `scale` is dx/dy of the final affine map from the unit
    cube of dequantized data (y in [0, 1)) to the model input, needed for bits/dim.
    """

    num_levels: int
    centered: bool = True

    @property
    def scale(self) -> float:
        return 2.0 if self.centered else 1.0

    def to_model(self, k: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
        k = np.asarray(k, np.float32)
        y = k / (self.num_levels - 1) if u is None else (k + u) / self.num_levels
        return (2.0 * y - 1.0 if self.centered else y).astype(np.float32)

    def to_levels(self, x: np.ndarray) -> np.ndarray:
        """Model outputs -> nearest integer levels (for PNGs and FID features)."""
        y = (np.asarray(x) + 1.0) / 2.0 if self.centered else np.asarray(x)
        return np.clip(np.rint(y * (self.num_levels - 1)), 0, self.num_levels - 1).astype(np.int32)

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x) + 1.0) / 2.0 if self.centered else np.asarray(x)
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


class Split(Protocol):
    """Random access to one split: `len(split)`, `split.get(indices) -> (data, labels)`."""

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass
class ArraySplit:
    """A split held in memory (digits, or small TFDS splits)."""

    data: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.data)

    def get(self, indices):
        return self.data[indices], self.labels[indices]


@dataclasses.dataclass
class TfdsSplit:
    """A TFDS split read example by example through `tfds.data_source`."""

    source: object
    image_key: str = "image"

    def __len__(self) -> int:
        return len(self.source)

    def get(self, indices):
        records = [self.source[int(i)] for i in indices]
        images = np.stack([np.asarray(r[self.image_key]) for r in records])
        labels = np.asarray([int(r.get("label", 0)) for r in records], np.int32)
        return images, labels


@dataclasses.dataclass
class SubsetSplit:
    """The examples `indices` of another split (e.g. a TFDS split without some classes)."""

    split: Split
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices):
        return self.split.get(self.indices[np.asarray(indices)])


def drop_classes(split: Split, classes: tuple[int, ...]) -> Split:
    """`split` without the examples whose label is in `classes` (order kept). A TFDS split's
    labels are read once, example by example.

    Raises:
      ValueError: nothing is left.
    """
    if isinstance(split, ArraySplit):
        labels = split.labels
    else:
        labels = np.concatenate([split.get(np.arange(i, min(i + 1024, len(split))))[1]
                                 for i in range(0, len(split), 1024)] or [np.zeros(0, int)])
    keep = np.flatnonzero(~np.isin(labels, classes))
    if not len(keep):
        raise ValueError(f"data.exclude_classes={list(classes)} drops every example of the split")
    if isinstance(split, ArraySplit):
        return ArraySplit(split.data[keep], split.labels[keep])
    return SubsetSplit(split, keep)


def load_digits(seed: int = 0, num_test: int = 297) -> dict[str, ArraySplit]:
    """scikit-learn's 1,797 8x8 digits (levels 0..16), split by a fixed permutation into
    1,500 train and 297 test images: [N, 8, 8, 1] int32."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = digits.images.astype(np.int32)[..., None]
    perm = np.random.default_rng(seed).permutation(len(images))
    test, train = perm[:num_test], perm[num_test:]
    return {"train": ArraySplit(images[train], digits.target[train].astype(np.int32)),
            "test": ArraySplit(images[test], digits.target[test].astype(np.int32))}


def toy_distribution(name: str, dim: int = 2):
    """Analytic toy sets. Returns an object with `sample(rng, n) -> [n, dim] float32`;
    labelled sets (`outliers`) also have `sample_labeled(rng, n, exclude=())`."""
    if name == "gmm":
        angles = 2 * np.pi * np.arange(8) / 8
        means = np.zeros((8, dim))
        means[:, 0], means[:, 1 % dim] = 2 * np.cos(angles), 2 * np.sin(angles)
        return _MixtureSampler(GaussianMixture.create(means, 0.2))
    if name == "checkerboard":
        return _Checkerboard()
    if name == "moons":
        return _Moons()
    if name == "outliers":
        return Outliers(dim)
    raise ValueError(f"unknown toy set '{name}'; available: {list(TOY_SETS)}")


@dataclasses.dataclass
class _MixtureSampler:
    mixture: GaussianMixture

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        m = self.mixture
        comp = rng.choice(len(m.weights), size=n, p=m.weights)
        return (m.means[comp] + m.stds[comp] * rng.standard_normal((n, m.dim))).astype(np.float32)


class _Checkerboard:
    """Uniform on the black squares of a 4x4 board over [-2, 2]^2."""

    def sample(self, rng, n):
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2 + (np.floor(x1) % 2)
        return np.stack([x1, x2], 1).astype(np.float32)


class _Moons:
    """Two interleaved half circles with Gaussian noise 0.05, centred and scaled by 1.5."""

    def sample(self, rng, n):
        upper = rng.integers(0, 2, n).astype(bool)
        theta = rng.uniform(0, np.pi, n)
        x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
        y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
        pts = np.stack([x - 0.5, y - 0.25], 1) * 1.5 + 0.05 * rng.standard_normal((n, 2))
        return pts.astype(np.float32)


class Outliers:
    """Tabular anomaly-detection data: correlated inliers (label 0) and, with probability
    `fraction`, outliers (label 1) that have exactly the inliers' per-feature marginals but
    independent features.

    Inliers: an equal mixture of 3 Gaussians in `dim` dimensions, each with covariance
    A A^T + 0.6^2 I (A: dim x 4, entries N(0, 1/4)) around a mean ~ N(0, I), all scaled by
    0.65 so features have std ~1; the parameters are fixed (seed 1234) for a given dim.
    An outlier takes each feature j from its own independent inlier draw, so any test on
    single features is at chance; only the joint density separates them. At dim = 10 the
    oracle score -log p_inlier(x) has AUROC 0.96 (`inlier_logpdf`).
    """

    fraction = 0.1
    num_components, rank, noise, scale = 3, 4, 0.6, 0.65

    def __init__(self, dim: int):
        rng = np.random.default_rng(1234)
        self.dim = dim
        self.means = self.scale * rng.standard_normal((self.num_components, dim))
        factors = rng.standard_normal((self.num_components, dim, self.rank)) / np.sqrt(self.rank)
        covs = factors @ factors.transpose(0, 2, 1) + self.noise**2 * np.eye(dim)
        self.chols = self.scale * np.linalg.cholesky(covs)

    def _inliers(self, rng: np.random.Generator, n: int) -> np.ndarray:
        comp = rng.integers(0, self.num_components, n)
        z = rng.standard_normal((n, self.dim))
        return self.means[comp] + np.einsum("nij,nj->ni", self.chols[comp], z)

    def sample_labeled(self, rng: np.random.Generator, n: int,
                       exclude: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        """n points and labels (1 = outlier); classes in `exclude` are never drawn."""
        p_out = 0.0 if 1 in exclude else (1.0 if 0 in exclude else self.fraction)
        labels = (rng.uniform(size=n) < p_out).astype(np.int32)
        x = self._inliers(rng, n)
        shuffled = np.stack([self._inliers(rng, n)[:, j] for j in range(self.dim)], 1)
        x = np.where(labels[:, None] == 1, shuffled, x)
        return x.astype(np.float32), labels

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.sample_labeled(rng, n)[0]

    def inlier_logpdf(self, x: np.ndarray) -> np.ndarray:
        """log p(x | inlier) in float64: [n, dim] -> [n] (the oracle anomaly score)."""
        x = np.asarray(x, np.float64)
        out = []
        for mean, chol in zip(self.means, self.chols):
            z = np.linalg.solve(chol, (x - mean).T)
            out.append(-0.5 * np.sum(z**2, 0) - np.sum(np.log(np.diag(chol)))
                       - 0.5 * self.dim * np.log(2 * np.pi))
        stacked = np.stack(out)
        top = stacked.max(0)
        return top + np.log(np.mean(np.exp(stacked - top), 0))


def prepare_command(name: str, data_dir: str) -> str:
    return (f'pip install "sde_lab[tf]" && tfds build {name} --file_format=array_record '
            f"--data_dir={data_dir}")


def load_tfds(name: str, split: str, data_dir: str | None) -> TfdsSplit:
    """Opens a prepared TFDS split; never downloads (an offline attempt hangs for minutes)."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types for "not prepared"
        raise FileNotFoundError(
            f"dataset '{name}' (split '{split}') is not prepared in {data_dir} as array_record "
            f"({type(e).__name__}); prepare it once with: {prepare_command(name, data_dir)}"
        ) from None
    return TfdsSplit(source)


class Dataset:
    """A dataset split with deterministic, resumable, per-process batches."""

    def __init__(self, split: Split | None, *, toy=None, scaler: Scaler | None = None,
                 image_size: int | None = None, random_flip: bool = False,
                 dequantize: bool = False, seed: int = 0, center_crop: int = 0,
                 exclude_classes: tuple[int, ...] = (), split_name: str = ""):
        self.split, self.toy, self.scaler = split, toy, scaler
        self.split_name = split_name
        self.exclude_classes = tuple(exclude_classes)
        self.center_crop = center_crop
        self.image_size, self.random_flip, self.dequantize = image_size, random_flip, dequantize
        self.seed = seed
        if split is not None and center_crop and len(split):
            self._crop(split.get(np.arange(1))[0])  # a crop larger than the images fails now

    @property
    def is_image(self) -> bool:
        return self.toy is None

    def __len__(self) -> int:
        return len(self.split) if self.split is not None else 0

    def _positions(self, step: int, batch_size: int) -> np.ndarray:
        """Dataset indices of global batch `step` (positions in per-epoch permutations)."""
        n = len(self.split)
        pos = np.arange(step * batch_size, (step + 1) * batch_size)
        epochs = pos // n
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            perm = np.random.default_rng([self.seed, int(e)]).permutation(n)
            sel = epochs == e
            out[sel] = perm[pos[sel] % n]
        return out

    def batch(self, step: int, batch_size: int, process_index: int = 0,
              process_count: int = 1) -> dict[str, np.ndarray]:
        """This process's slice of global batch `step`: {"x": float32, "label": int32}."""
        local = batch_size // process_count
        rng = np.random.default_rng([self.seed, step, 7919])
        lo, hi = process_index * local, (process_index + 1) * local
        if self.toy is not None:
            if hasattr(self.toy, "sample_labeled"):
                x, labels = self.toy.sample_labeled(rng, batch_size, self.exclude_classes)
                return {"x": x[lo:hi], "label": labels[lo:hi]}
            x = self.toy.sample(rng, batch_size)[lo:hi]
            return {"x": x, "label": np.zeros((local,), np.int32)}
        idx = self._positions(step, batch_size)[lo:hi]
        levels, labels = self.split.get(idx)
        levels = self._crop(levels)
        u = rng.uniform(size=(batch_size,) + levels.shape[1:])[lo:hi] if self.dequantize else None
        x = self.scaler.to_model(levels, u)
        if self.random_flip:
            flip = rng.uniform(size=batch_size)[lo:hi] < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return {"x": self._resize(x), "label": labels.astype(np.int32)}

    def _crop(self, levels: np.ndarray) -> np.ndarray:
        """Central crop_size x crop_size square (score_sde's CelebA: 140, before resizing)."""
        c = self.center_crop
        if not c:
            return levels
        h, w = levels.shape[1:3]
        if c > min(h, w):
            raise ValueError(f"data.center_crop={c} is larger than the {h}x{w} images")
        top, left = (h - c) // 2, (w - c) // 2
        return levels[:, top:top + c, left:left + c]

    def _resize(self, x: np.ndarray) -> np.ndarray:
        if self.image_size is None or x.shape[1] == self.image_size:
            return x
        import jax

        shape = (x.shape[0], self.image_size, self.image_size, x.shape[-1])
        return np.asarray(jax.image.resize(x, shape, "bilinear", antialias=True))

    def levels(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw integer images [start, stop) in dataset order (eval: bits/dim, reference FID)."""
        levels, labels = self.split.get(np.arange(start, min(stop, len(self.split))))
        levels = self._crop(levels)
        if self.image_size is not None and levels.shape[1] != self.image_size:
            raise ValueError(f"eval images are {levels.shape[1]}x{levels.shape[1]} but "
                             f"data.image_size={self.image_size}; bits/dim needs raw pixels")
        return levels, labels

    def examples(self, num: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The first `num` examples (0: all) in dataset order, in model space, with their
        labels: images neither dequantized nor flipped; a toy set's split is
        TOY_EVAL_SIZE draws fixed by the seed and the split's name."""
        if self.toy is None:
            levels, labels = self.levels(0, num or len(self))
            return self._resize(self.scaler.to_model(levels)), labels.astype(np.int32)
        rng = np.random.default_rng([self.seed, 104729, zlib.crc32(self.split_name.encode())])
        n = num or TOY_EVAL_SIZE
        if hasattr(self.toy, "sample_labeled"):
            return self.toy.sample_labeled(rng, n, self.exclude_classes)
        return self.toy.sample(rng, n), np.zeros((n,), np.int32)

    def iterate(self, start_step: int, batch_size: int, process_index: int = 0,
                process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.batch(step, batch_size, process_index, process_count)
            step += 1


def make(dataset: str, split: str, *, num_levels: int = 256, centered: bool = True,
         image_size: int | None = None, random_flip: bool = False,
         uniform_dequantization: bool = False, data_dir: str | None = None, toy_dim: int = 2,
         seed: int = 0, train: bool = True, center_crop: int = 0,
         exclude_classes: tuple[int, ...] = ()) -> Dataset:
    """Builds a dataset: "digits", "toy:<gmm|checkerboard|moons|outliers>", or any prepared
    TFDS name. `exclude_classes` drops the examples of those labels (the runner passes
    data.exclude_classes for the train split only: leave-classes-out anomaly detection).

    Raises:
      ValueError: unknown toy set or split of the embedded digits; classes to exclude from
        an unlabelled toy set, or that leave nothing.
      FileNotFoundError: a TFDS dataset that is not prepared (with the command to prepare it).
    """
    scaler = Scaler(num_levels, centered)
    common = dict(scaler=scaler, image_size=image_size, seed=seed, center_crop=center_crop,
                  random_flip=random_flip and train, dequantize=uniform_dequantization and train)
    exclude_classes = tuple(exclude_classes)
    if dataset.startswith("toy:"):
        toy = toy_distribution(dataset[4:], toy_dim)
        if exclude_classes:
            if not hasattr(toy, "sample_labeled"):
                raise ValueError(f"data.exclude_classes: {dataset} has no classes (only "
                                 "toy:outliers is labelled)")
            if set(exclude_classes) >= {0, 1}:
                raise ValueError(f"data.exclude_classes={list(exclude_classes)} drops every "
                                 f"example of {dataset} (labels 0 and 1)")
        return Dataset(None, toy=toy, seed=seed, exclude_classes=exclude_classes,
                       split_name=split)
    if dataset == "digits":
        splits = load_digits()
        if split not in splits:
            raise ValueError(f"digits has splits {sorted(splits)}, not '{split}'")
        if num_levels != 17:
            raise ValueError(f"digits has 17 levels (0..16); set data.num_levels=17, not {num_levels}")
        source = splits[split]
    else:
        source = load_tfds(dataset, split, data_dir)
    if exclude_classes:
        source = drop_classes(source, exclude_classes)
    return Dataset(source, exclude_classes=exclude_classes, split_name=split, **common)


def image_grid(images: np.ndarray, ncol: int | None = None) -> np.ndarray:
    """[N, H, W, C] uint8 -> one [rows*(H+1)+1, ncol*(W+1)+1, C] grid with 1-px borders."""
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img
    return grid


def save_png(path: str, images_uint8: np.ndarray, upscale: int = 1,
             ncol: int | None = None) -> None:
    """Writes a grid of [N, H, W, C] uint8 images (`ncol` per row, default about sqrt(N)),
    each pixel repeated `upscale` times."""
    from PIL import Image

    grid = image_grid(images_uint8, ncol)
    if upscale > 1:
        grid = grid.repeat(upscale, 0).repeat(upscale, 1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
