"""A small CNN on scikit-learn's 8x8 digits, whose penultimate layer is the digits-FID feature.

FID with Inception features is meaningless for 8x8 grayscale digits (they would be blown up
37x to 299x299). The default embedded run instead reports a "digits FID": the Frechet
distance of this classifier's 64-d penultimate features, in the spirit of the MNIST-classifier
FIDs of the GAN literature. Its numbers are comparable only with each other.

Network (~73k parameters, ~290 KB shipped as `digits_classifier.npz`): input 8x8x1 in
[-1, 1]; conv3x3(32) ReLU; conv3x3(64, stride 2) ReLU; conv3x3(64, stride 2) ReLU; dense(64)
swish = features [B, 64] (smooth, so no feature is dead and the covariance stays full rank);
dense(10) = logits.

Train and ship the weights (about a minute on 2 CPU cores; deterministic given --seed):

    python -m sde_lab.metrics.digits_classifier --out sde_lab/metrics/digits_classifier.npz

Data split (`digits_split`): a fixed stratified 80/20 train/held-out split of the 1,797
images (scikit-learn `train_test_split`, random_state=0). Pixel values 0..16 are scaled to
[0, 1], the feature-extractor input convention.
"""

from __future__ import annotations

import argparse
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sde_lab.metrics import convert

Array = jax.Array
FEATURE_DIM = 64
NUM_CLASSES = 10
DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "digits_classifier.npz")


class DigitsCNN(nn.Module):
    """`apply(variables, x)` with x: [B, 8, 8, 1] in [-1, 1] -> (features [B, 64], logits [B, 10])."""

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv2")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv3")(x))
        x = x.reshape(x.shape[0], -1)
        features = nn.swish(nn.Dense(FEATURE_DIM, name="hidden")(x))
        return features, nn.Dense(NUM_CLASSES, name="out")(features)


def digits_split(test_fraction: float = 0.2, seed: int = 0):
    """Returns (x_train, y_train, x_test, y_test); x: [N, 8, 8, 1] float32 in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=test_fraction,
                                              random_state=seed, stratify=data.target)
    return x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32)


def _shift(key: Array, x: Array) -> Array:
    """Random translation by up to one pixel (zero fill = background), per example."""
    shifts = jax.random.randint(key, (x.shape[0], 2), 0, 3)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    crop = lambda img, s: jax.lax.dynamic_slice(img, (s[0], s[1], 0), (8, 8, 1))
    return jax.vmap(crop)(padded, shifts)


def train(num_steps: int = 3000, batch_size: int = 128, learning_rate: float = 3e-3,
          seed: int = 0) -> dict:
    """Trains DigitsCNN with Adam (cosine decay, weight decay 1e-4) and shift augmentation.

    Returns the Flax variables. Deterministic given `seed` on one machine.
    """
    x_tr, y_tr, _, _ = digits_split()
    net = DigitsCNN()
    key = jax.random.key(seed)
    variables = net.init(key, jnp.zeros((1, 8, 8, 1)))
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, num_steps), weight_decay=1e-4)
    opt_state = tx.init(variables)
    x_tr, y_tr = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def loss_fn(v, x, y):
        _, logits = net.apply(v, 2.0 * x - 1.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(v, opt_state, key):
        k_idx, k_shift = jax.random.split(key)
        idx = jax.random.choice(k_idx, x_tr.shape[0], (batch_size,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(v, _shift(k_shift, x_tr[idx]), y_tr[idx])
        updates, opt_state = tx.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state, loss

    for i in range(num_steps):
        variables, opt_state, loss = step(variables, opt_state, jax.random.fold_in(key, i))
    return variables


def accuracy(variables, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy on [N, 8, 8, 1] images in [0, 1]."""
    _, logits = jax.jit(DigitsCNN().apply)(variables, 2.0 * jnp.asarray(x) - 1.0)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))


def load_variables(path: str | None = None) -> dict:
    """Loads the shipped (or given) `.npz` weights; FileNotFoundError says how to train them."""
    path = path or DEFAULT_WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"digits classifier weights '{path}' not found; train them with\n"
            "  python -m sde_lab.metrics.digits_classifier --out sde_lab/metrics/digits_classifier.npz")
    with np.load(path) as data:
        return jax.tree_util.tree_map(jnp.asarray, convert.unflatten({k: data[k] for k in data.files}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the digits-FID feature classifier.")
    parser.add_argument("--out", required=True, help="output .npz (the shipped weights are "
                        f"{DEFAULT_WEIGHTS}; overwrite them only on purpose)")
    parser.add_argument("--num_steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.time()
    variables = train(num_steps=args.num_steps, seed=args.seed)
    x_tr, y_tr, x_te, y_te = digits_split()
    np.savez_compressed(args.out, **convert.flatten(variables))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KB) in {time.time() - start:.0f} s; "
          f"train accuracy {accuracy(variables, x_tr, y_tr):.4f}, "
          f"held-out accuracy {accuracy(variables, x_te, y_te):.4f}")


if __name__ == "__main__":
    main()
