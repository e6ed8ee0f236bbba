import pytest
import torch

from fedsynth.models import build_gan


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(size, channels):
    gan = build_gan("dcgan", size, channels, nz=8, ngf=4, ndf=4, seed=0)
    z = torch.randn(3, 8)
    x = gan.G(z)
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1
    assert gan.D(x).shape == (3,)


def test_dcgan_64_matches_the_paper_layout():
    gan = build_gan("dcgan", 64, 3, nz=100, ngf=64, ndf=64, seed=0)
    convT = [m for m in gan.G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.out_channels for m in convT] == [512, 256, 128, 64, 3]
    conv = [m for m in gan.D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.out_channels for m in conv] == [64, 128, 256, 512, 1]


def test_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_gan("dcgan", 32, 1, 8, 4, 4, seed=7).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_gan("dcgan", 32, 1, 8, 4, 4, seed=7).state_dict()
    c = build_gan("dcgan", 32, 1, 8, 4, 4, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["G.net.0.weight"], c["G.net.0.weight"])


def test_bad_size():
    with pytest.raises(ValueError, match="power of two"):
        build_gan("dcgan", 48, 1, 8, 4, 4, seed=0)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_folded_generator_draws_the_same_images(norm):
    """Sampling folds BatchNorm into the convolution before it: the same images to float
    rounding, and the training network is left as it was."""
    from fedsynth.models import ModelSpec
    gan = build_gan(ModelSpec(image_size=16, nz=8, ngf=8, ndf=8, g_norm=norm), seed=0)
    G = gan.G
    with torch.no_grad():  # running statistics away from (0, 1), so folding has work to do
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    G.eval()
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in G.state_dict().items()}
    with torch.no_grad():
        ref = G(z)
        folded = G.folded()
        out = folded(z)
    assert torch.allclose(out, ref, atol=1e-6)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert n_bn == 0
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("shape", [(3, 8, 4, 4, 2, 1, False), (2, 5, 7, 9, 2, 1, True), (2, 4, 6, 6, 1, 0, True),
                                   (1, 3, 5, 5, 3, 2, False)])
def test_column_transposed_convolution_matches_the_convolution(shape):
    """The gray output layer's matmul + col2im form is the same function as the transposed
    convolution (any stride, padding, bias, non-square maps), to float rounding."""
    from fedsynth.models.dcgan import ColumnConvTranspose2d
    n, cin, h, w, stride, pad, bias = shape
    conv = torch.nn.ConvTranspose2d(cin, 1, 4, stride, pad, bias=bias)
    x = torch.randn(n, cin, h, w, generator=torch.Generator().manual_seed(2))
    fast = ColumnConvTranspose2d(conv)
    with torch.no_grad():
        ref, out = conv(x), fast(x)
        out_cl = fast(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(out_cl, ref, atol=1e-6)
    with pytest.raises(ValueError, match="one output channel"):
        ColumnConvTranspose2d(torch.nn.ConvTranspose2d(cin, 3, 4, 2, 1))


def test_folded_gray_generator_uses_the_column_output_layer_and_rgb_does_not():
    from fedsynth.models import ModelSpec
    from fedsynth.models.dcgan import ColumnConvTranspose2d
    for nc, expect in ((1, True), (3, False)):
        G = build_gan(ModelSpec(image_size=16, channels=nc, nz=8, ngf=8, ndf=8), seed=0).G.eval()
        assert any(isinstance(m, ColumnConvTranspose2d) for m in G.folded().modules()) is expect
