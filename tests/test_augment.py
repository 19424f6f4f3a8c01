import pytest
import torch
from PIL import Image
from torchvision import transforms

from cifar_lit.data.augment import (
    apply_crops,
    apply_cutout,
    apply_flips,
    augment_batch,
    channel_tensor,
    denormalize,
    draw_crop_offsets,
    draw_cutout_centers,
    draw_flips,
    normalize,
)
from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD

MEAN, STD = channel_tensor(CIFAR10_MEAN), channel_tensor(CIFAR10_STD)


def uint8_batch(n=64, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_offsets_stay_within_the_padding():
    offsets = draw_crop_offsets(5000, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert offsets.min() == 0 and offsets.max() == 8
    assert len(torch.unique(offsets[:, 0])) == 9  # every translation occurs


def test_crop_is_the_padded_window_at_its_offset():
    images = uint8_batch(16)
    offsets = draw_crop_offsets(16, 4, torch.Generator().manual_seed(1), torch.device("cpu"))
    out = apply_crops(images, offsets, 4)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_centre_offset_is_identity_and_edges_bring_black_borders():
    images = uint8_batch(2) | 1  # no zero pixels
    same = apply_crops(images, torch.tensor([[4, 4], [4, 4]]), 4)
    assert torch.equal(same, images)
    shifted = apply_crops(images, torch.tensor([[0, 0], [8, 8]]), 4)
    assert (shifted[0, :, :4, :] == 0).all() and (shifted[1, :, -4:, :] == 0).all()


def test_flip_rate_is_about_one_half_and_flips_mirror():
    flips = draw_flips(20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert 0.48 < flips.float().mean() < 0.52
    images = uint8_batch(4)
    out = apply_flips(images, torch.tensor([True, False, True, False]))
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])


def test_augmentation_is_determined_by_its_seed():
    images = uint8_batch(32)
    a = augment_batch(images, torch.Generator().manual_seed(7), MEAN, STD, cutout=8)
    b = augment_batch(images, torch.Generator().manual_seed(7), MEAN, STD, cutout=8)
    c = augment_batch(images, torch.Generator().manual_seed(8), MEAN, STD, cutout=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmented_batch_shape_type_and_range():
    out = augment_batch(uint8_batch(8), torch.Generator().manual_seed(0), MEAN, STD)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    low = ((0 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)).min()
    high = ((1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)).max()
    assert out.min() >= low - 1e-5 and out.max() <= high + 1e-5


def test_normalization_matches_the_pil_path():
    images = uint8_batch(6)
    pil = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    expected = torch.stack([pil(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images])
    torch.testing.assert_close(normalize(images, MEAN, STD), expected, atol=1e-5, rtol=0)


def test_denormalize_inverts_normalize():
    images = uint8_batch(4)
    back = denormalize(normalize(images, MEAN, STD), MEAN, STD)
    torch.testing.assert_close(back, images.float() / 255, atol=1e-5, rtol=0)


def test_cutout_zeroes_a_square_clipped_at_the_border():
    images = torch.ones(2, 3, 32, 32)
    out = apply_cutout(images, torch.tensor([[16, 16], [0, 0]]), 8)
    assert (out[0] == 0).sum() == 3 * 64
    assert (out[0, :, 12:20, 12:20] == 0).all()
    assert (out[1] == 0).sum() == 3 * 16  # the corner square keeps its 4x4 inside part
    centers = draw_cutout_centers(1000, 32, 32, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert centers.min() >= 0 and centers.max() <= 31


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_augmentation_matches_the_cpu_given_the_same_offsets():
    images = uint8_batch(16)
    offsets = draw_crop_offsets(16, 4, torch.Generator().manual_seed(3), torch.device("cpu"))
    flips = draw_flips(16, torch.Generator().manual_seed(4), torch.device("cpu"))
    cpu = normalize(apply_flips(apply_crops(images, offsets, 4), flips), MEAN, STD)
    gpu = normalize(apply_flips(apply_crops(images.cuda(), offsets.cuda(), 4), flips.cuda()), MEAN.cuda(), STD.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)
