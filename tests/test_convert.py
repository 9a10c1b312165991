"""sde_lab.convert: reference checkpoints -> sde_lab networks.

Expected values come from the reference implementations, not from the converter: the
fixtures in tests/data/convert were written by score_sde and score_sde_pytorch themselves
(tests/data/convert/make_fixtures.py, tests/data/convert/README.md) with the output of their
networks on a fixed input, and structure.json.xz lists their parameter names and shapes
at the published sizes.
"""

import functools
import json
import lzma
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab import convert, models
from sde_lab.convert import mapping, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "convert")
FORMATS = ("score_sde", "score_sde_pytorch")
# family -> (sde_lab config of the published model, model size of its fixture per format)
FAMILIES = {
    "ncsnpp": ("configs/cifar10_ncsnpp_ve.py", "ref_tiny_ncsnpp", "ref_tiny_ncsnpp"),
    "ddpmpp": ("configs/cifar10_ddpmpp_vp.py", "ref_tiny_ddpmpp", "ref_tiny_ddpmpp"),
    "ncsnv2": ("configs/cifar10_ncsnv2.py", "ref_tiny", "ref_tiny_pytorch"),
    "ddpm": ("configs/cifar10_ddpm.py", "ref_tiny", "ref_tiny"),
}
CASES = [(fmt, family) for fmt in FORMATS for family in FAMILIES]
IDS = [f"{fmt}-{family}" for fmt, family in CASES]
# structure.json.xz entry -> (model, size, image side) of the sde_lab network
STRUCTURES = {
    "ncsnpp_cont": ("ncsnpp", "ncsnpp_cont", 32),
    "ncsnpp_cont_deep": ("ncsnpp", "ncsnpp_cont_deep", 32),
    "ddpmpp_cont": ("ncsnpp", "ddpmpp_cont", 32),
    "ddpmpp_cont_deep": ("ncsnpp", "ddpmpp_cont_deep", 32),
    "ddpm_cifar10": ("ddpm", "cifar10", 32),
    "ncsnv2_cifar10": ("ncsnv2", "cifar10", 32),
    "ncsnpp_256": ("ncsnpp", "ncsnpp_256", 256),
    "ncsnv2_bedroom128": ("ncsnv2", "bedroom128", 128),
    "ddpm_lsun256": ("ddpm", "lsun256", 256),
}
# One compile per network: XLA's CPU optimisation costs more than it saves here.
FAST_JIT = functools.partial(jax.jit, compiler_options={
    "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
# Random-weight round trips at the published CIFAR-10 sizes; the deep variants (107M
# parameters, ~2 GB at peak) are checked shape-only (test_names_and_shapes_...).
ROUND_TRIP = ["ncsnpp_cont", "ddpmpp_cont", "ddpm_cifar10", "ncsnv2_cifar10"]


def _config(family, fmt, runlocal=True):
    """The family's sde_lab config (:runlocal) with the fixture's network, 8x8 images."""
    import importlib.util

    sys.path.insert(0, ROOT)
    spec = importlib.util.spec_from_file_location("_cfg", os.path.join(ROOT, FAMILIES[family][0]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal" if runlocal else None)
    config.model.size = FAMILIES[family][1 if fmt == "score_sde" else 2]
    config.data.image_size = 8
    return config


@functools.cache
def _checkpoint_file(fmt, family, tmp_root):
    """The fixture checkpoint, decompressed once per session."""
    folder = os.path.join(DATA, fmt, family)
    name = next(f for f in os.listdir(folder) if f.endswith(".xz"))
    path = os.path.join(tmp_root, fmt, family, name[:-3])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with lzma.open(os.path.join(folder, name)) as src, open(path, "wb") as dst:
        dst.write(src.read())
    return path


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("convert"))


@functools.cache
def _structures(fmt):
    with lzma.open(os.path.join(DATA, fmt, "structure.json.xz"), "rt") as f:
        return json.load(f)


def _torch_for(fmt):
    """score_sde_pytorch checkpoints are torch pickles, and torch is optional (`pip install
    "sde_lab[torch]"`; CI installs it): without it those cases skip, the flax ones run."""
    if fmt == "score_sde_pytorch":
        return pytest.importorskip("torch", reason="score_sde_pytorch checkpoints need torch")
    return None


def _relative_error(out, ref):
    return float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))


# ---------------------------------------------------------------- reference outputs

@pytest.mark.parametrize("fmt,family", CASES, ids=IDS)
def test_converted_network_reproduces_reference_output(fmt, family, tmp_root):
    """The network that main.py builds for the config, filled from the fixture, gives the
    reference network's output on the stored input to 1e-5 relative (max abs error over
    max abs output)."""
    _torch_for(fmt)
    net, x_shape = workdir.build_network(_config(family, fmt))
    ref = np.load(os.path.join(DATA, fmt, family, "reference.npz"))
    assert tuple(x_shape) == ref["x"].shape[1:]
    variables, step = convert.load(fmt, _checkpoint_file(fmt, family, tmp_root), net, x_shape)
    assert step == json.load(open(os.path.join(DATA, fmt, "manifest.json")))["num_train_steps"]
    out = FAST_JIT(net.apply)(variables, jnp.asarray(ref["x"]), jnp.asarray(ref["cond"]))
    out = np.asarray(out) / ref["divisor"][:, None, None, None]
    assert _relative_error(out, ref["out"]) < 1e-5


def test_ema_weights_are_converted_not_raw(tmp_path):
    """Synthetic checkpoints in both formats whose EMA and raw weights differ: the EMA
    ones come out by default, the raw ones with ema=False; the torch EMA list skips the
    fixed Fourier W (requires_grad=False), which comes from the model state_dict."""
    import flax.serialization

    torch = _torch_for("score_sde_pytorch")
    net = models.make("ncsnpp", size="ref_tiny_ncsnpp")
    shapes = mapping.leaves(mapping.abstract_params(net, (8, 8, 3)))
    rng = np.random.default_rng(0)
    ema, raw = ({"params": _unflatten({p: rng.standard_normal(s.shape).astype(np.float32)
                                       for p, s in shapes.items()})} for _ in range(2))

    flax_ref = {fmt: convert.to_reference(v, net, (8, 8, 3), "score_sde") for fmt, v in
                (("ema", ema), ("raw", raw))}
    state = {"step": 7, "optimizer": {"target": _nest(flax_ref["raw"]), "state": {}},
             "params_ema": _nest(flax_ref["ema"]), "lr": 2e-4, "ema_rate": 0.999}
    (tmp_path / "checkpoint_7").write_bytes(flax.serialization.msgpack_serialize(state))

    torch_ema = convert.to_reference(ema, net, (8, 8, 3), "score_sde_pytorch")
    torch_raw = convert.to_reference(raw, net, (8, 8, 3), "score_sde_pytorch")
    entries = mapping.plan(net, (8, 8, 3), "score_sde_pytorch")
    shadow = [torch.from_numpy(torch_ema[e.key]) for e in entries if e.trainable]
    model = {"module." + k: torch.from_numpy(v) for k, v in torch_raw.items()}
    torch.save({"model": model, "ema": {"decay": 0.999, "num_updates": 7,
                                        "shadow_params": shadow},
                "optimizer": {}, "step": 7}, tmp_path / "checkpoint_7.pth")

    for fmt in FORMATS:
        path = str(tmp_path)   # a directory: its latest checkpoint_N[.pth]
        got, step = convert.load(fmt, path, net, (8, 8, 3))
        got_raw, _ = convert.load(fmt, path, net, (8, 8, 3), ema=False)
        assert step == 7
        for p, a in mapping.leaves(got["params"]).items():
            fixed_w = fmt == "score_sde_pytorch" and p[0].startswith("GaussianFourier")
            want = raw if fixed_w else ema
            np.testing.assert_array_equal(a, mapping.leaves(want["params"])[p])
            np.testing.assert_array_equal(mapping.leaves(got_raw["params"])[p],
                                          mapping.leaves(raw["params"])[p])


def _unflatten(flat):
    tree = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _nest(flat_by_slash):
    return _unflatten({tuple(k.split("/")): v for k, v in flat_by_slash.items()})


# ---------------------------------------------------------------- published sizes

@pytest.mark.parametrize("name", [
    name if name in ("ncsnpp_cont", "ddpmpp_cont", "ddpm_cifar10", "ncsnv2_cifar10")
    else pytest.param(name, marks=pytest.mark.slow) for name in STRUCTURES])
def test_names_and_shapes_equal_reference_at_published_sizes(name):
    """Every parameter of the reference network at the published size (its own names and
    shapes, stored by the fixture script) is one sde_lab parameter and vice versa; for
    torch also which ones are fixed (requires_grad=False: not in the EMA list)."""
    model, size, side = STRUCTURES[name]
    net = models.make(model, size=size)
    traced = mapping.trace(net, (side, side, 3))
    for fmt in FORMATS:
        if model == "ncsnv2" and fmt == "score_sde_pytorch" and size == "cifar10":
            net = models.make(model, size="cifar10_pytorch")
            traced = mapping.trace(net, (side, side, 3))
        entries = mapping.plan(net, (side, side, 3), fmt, traced)
        ours = {e.key: mapping.reference_shape(e.shape, e.layout) for e in entries}
        reference = [[item[0].removeprefix("module."), *item[1:]]
                     for item in _structures(fmt)[name]]
        kinds = {item[0]: item[2] for item in reference} if fmt != "score_sde" else {}
        theirs = {item[0]: tuple(item[1]) for item in reference
                  if kinds.get(item[0]) != "buffer"}
        assert ours == theirs, fmt
        if fmt == "score_sde_pytorch":
            assert {e.key for e in entries if not e.trainable} == {
                k for k, kind in kinds.items() if kind == "fixed"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ROUND_TRIP)
def test_full_size_random_checkpoint_round_trip(fmt, name, tmp_path):
    """A random-weight checkpoint with the reference's full-size structure (and, for
    torch, an EMA that differs from the model) converts to exactly its arrays."""
    import flax.serialization

    torch = _torch_for(fmt)
    model, size, side = STRUCTURES[name]
    if model == "ncsnv2" and fmt == "score_sde_pytorch":
        size = "cifar10_pytorch"
    net = models.make(model, size=size)
    rng = np.random.default_rng(1)
    reference = [[item[0].removeprefix("module."), *item[1:]] for item in _structures(fmt)[name]]
    arrays = {item[0]: rng.standard_normal(item[1], np.float32) for item in reference}
    if fmt == "score_sde":
        state = {"step": 11, "optimizer": {"target": {}, "state": {}},
                 "params_ema": _nest(arrays)}
        path = tmp_path / "checkpoint_11"
        path.write_bytes(flax.serialization.msgpack_serialize(state))
        del state
        expected = arrays
    else:
        ema = {k: rng.standard_normal(shape, np.float32) for k, shape, kind in reference
               if kind == "param"}
        torch.save({"model": {"module." + k: torch.from_numpy(v) for k, v in arrays.items()},
                    "ema": {"shadow_params": [torch.from_numpy(v) for v in ema.values()]},
                    "optimizer": {}, "step": 11}, tmp_path / "checkpoint_11.pth")
        path = tmp_path / "checkpoint_11.pth"
        expected = {**arrays, **ema}
    variables, step = convert.load(fmt, str(path), net, (side, side, 3))
    assert step == 11
    got = mapping.leaves(variables["params"])
    for e in mapping.plan(net, (side, side, 3), fmt):
        np.testing.assert_array_equal(got[e.path], mapping.to_sde_lab(expected[e.key], e.layout))


# ---------------------------------------------------------------- errors

def _error(fmt, family, tmp_root, **fields):
    name = {"ncsnpp": "ncsnpp", "ddpmpp": "ncsnpp"}.get(family, family)
    size = FAMILIES[family][1 if fmt == "score_sde" else 2]
    net = models.make(name, size=size, **fields)
    with pytest.raises(convert.ConversionError) as e:
        convert.load(fmt, _checkpoint_file(fmt, family, tmp_root), net, (8, 8, 3))
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("fmt", FORMATS)
def test_mismatch_names_parameters_and_the_field_that_differs(fmt, tmp_root):
    _torch_for(fmt)
    assert "model field fir differs" in _error(fmt, "ncsnpp", tmp_root, fir=False)
    message = _error(fmt, "ddpmpp", tmp_root, embedding_type="fourier")
    assert "model field embedding_type differs" in message
    assert fmt != "score_sde" or "missing GaussianFourierProjection_0/W" in message
    assert "num_res_blocks" in _error(fmt, "ddpmpp", tmp_root, num_res_blocks=2)
    assert "model field nf/ch_mult" in _error(fmt, "ddpm", tmp_root, nf=64, norm_groups=32)


def test_layer_semantics_mismatch_is_refused(tmp_root):
    assert "torch_compat=True" in _error("score_sde_pytorch", "ncsnv2", tmp_root,
                                         torch_compat=False)
    assert "torch_compat=False" in _error("score_sde", "ncsnv2", tmp_root, torch_compat=True)
    assert "norm_groups=32" in _error("score_sde", "ddpm", tmp_root, norm_groups=0)


def test_unreadable_files_fail_in_one_line(tmp_path):
    (tmp_path / "checkpoint_1").write_bytes(b"not msgpack")
    (tmp_path / "checkpoint_1.pth").write_bytes(b"not a zip")
    net = models.make("ncsnpp", size="ref_tiny_ncsnpp")
    for fmt, path in (("score_sde", tmp_path / "checkpoint_1"),
                      ("score_sde_pytorch", tmp_path / "checkpoint_1.pth"),
                      ("score_sde", tmp_path / "missing")):
        with pytest.raises(convert.ConversionError) as e:
            convert.load(fmt, str(path), net, (8, 8, 3))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- CLI and main.py

def _run(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=900)


# Each family once, each format twice (three subprocesses per case).
CLI_CASES = [("score_sde", "ncsnpp"), ("score_sde_pytorch", "ddpmpp"),
             ("score_sde_pytorch", "ncsnv2"), ("score_sde", "ddpm")]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,family", CLI_CASES, ids=[f"{f}-{m}" for f, m in CLI_CASES])
def test_cli_converts_and_main_samples(fmt, family, tmp_root, tmp_path):
    """python -m sde_lab.convert writes a workdir whose checkpoint `main.py --mode sample`
    restores and samples with the same config; a second conversion into it is refused."""
    _torch_for(fmt)
    size = FAMILIES[family][1 if fmt == "score_sde" else 2]
    config = [f"--config={FAMILIES[family][0]}:runlocal", f"--config.model.size={size}",
              "--config.data.image_size=8"]
    out = _run(["-m", "sde_lab.convert", fmt, "--checkpoint",
                _checkpoint_file(fmt, family, tmp_root), f"--workdir={tmp_path}", *config])
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"converted {fmt} checkpoint (step 3, EMA weights" in out.stdout
    out = _run(["main.py", f"--workdir={tmp_path}", "--mode=sample", *config])
    assert out.returncode == 0, out.stderr[-2000:]
    samples = np.load(tmp_path / "samples" / "samples_3.npz")["x"]
    assert samples.shape == (16, 8, 8, 3) and np.all(np.isfinite(samples))
    out = _run(["-m", "sde_lab.convert", fmt, "--checkpoint",
                _checkpoint_file(fmt, family, tmp_root), f"--workdir={tmp_path}", *config])
    assert out.returncode != 0 and "already has checkpoints [3]" in out.stderr
