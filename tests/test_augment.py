import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from cifar_lit.data.augment import (
    augment,
    channel_tensor,
    cutout_mask,
    decode,
    denormalize,
    draw_codes,
    input_dtype,
    normalize,
    pad,
    scale_and_shift,
)
from cifar_lit.data.constants import CIFAR10_MEAN, CIFAR10_STD

SCALE, SHIFT = scale_and_shift(CIFAR10_MEAN, CIFAR10_STD)
SIZE = (32, 32)
PIL_NORMALIZE = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def uint8_batch(n=64, seed=0):
    """Random uint8 NHWC images."""
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def codes(n, seed=0, padding=4, flip=True, cutout=0):
    return draw_codes(n, padding, flip=flip, cutout=cutout, size=SIZE, generator=torch.Generator().manual_seed(seed),
                      device=torch.device("cpu"))


def test_draws_cover_every_crop_and_flip_independently():
    draws = decode(codes(20000, cutout=8), 4, flip=True, cutout=8, size=SIZE)
    assert draws.dy.min() == 0 and draws.dy.max() == 8 and draws.dx.min() == 0 and draws.dx.max() == 8
    assert 0.48 < draws.flip.float().mean() < 0.52
    assert len({(y, x, f) for y, x, f in zip(draws.dy.tolist(), draws.dx.tolist(), draws.flip.tolist(),
                                             strict=True)}) == 9 * 9 * 2
    assert draws.cy.min() == 0 and draws.cy.max() == 31 and draws.cx.min() == 0 and draws.cx.max() == 31


def test_augmentation_is_torchvisions_pad_crop_and_mirror_on_the_same_draws():
    images = uint8_batch(32)
    packed = codes(32, seed=3)
    out = augment(pad(images, 4), packed, SCALE, SHIFT, padding=4, flip=True, cutout=0)
    draws = decode(packed, 4, flip=True, cutout=0, size=SIZE)
    for i in range(32):
        picture = TF.pad(Image.fromarray(images[i].numpy()), 4)
        picture = TF.crop(picture, int(draws.dy[i]), int(draws.dx[i]), 32, 32)
        if draws.flip[i]:
            picture = TF.hflip(picture)
        torch.testing.assert_close(out[i], PIL_NORMALIZE(picture), atol=1e-5, rtol=0)


def test_centre_crop_is_the_image_and_edge_crops_bring_black_borders():
    images = uint8_batch(2) | 1  # no black pixels of their own
    centre = torch.tensor([4 + 4 * 9, 4 + 4 * 9])  # dy = dx = 4, not mirrored
    same = augment(pad(images, 4), centre, SCALE, SHIFT, padding=4, flip=True, cutout=0)
    torch.testing.assert_close(same, normalize(images, SCALE, SHIFT), atol=1e-6, rtol=0)
    corners = torch.tensor([0, 8 + 8 * 9])  # top-left corner, bottom-right corner
    shifted = augment(pad(images, 4), corners, SCALE, SHIFT, padding=4, flip=True, cutout=0)
    black = SHIFT[:, None, None]  # a zero pixel, normalized
    assert torch.allclose(shifted[0, :, :4, :], black.expand(3, 4, 32))
    assert torch.allclose(shifted[1, :, -4:, :], black.expand(3, 4, 32))


def test_augmentation_is_determined_by_its_seed():
    padded = pad(uint8_batch(32), 4)
    a, b, c = (augment(padded, codes(32, seed=s, cutout=8), SCALE, SHIFT, padding=4, flip=True, cutout=8)
               for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_output_dtype_layout_and_range():
    out = augment(pad(uint8_batch(8), 4), codes(8), SCALE, SHIFT, padding=4, flip=True, cutout=0, dtype=torch.bfloat16)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)  # a view of the NHWC data, no copy
    low = ((0 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)).min()
    high = ((1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)).max()
    assert out.float().min() >= low - 0.02 and out.float().max() <= high + 0.02
    flat = augment(pad(uint8_batch(8), 4), codes(8), SCALE, SHIFT, padding=4, flip=True, cutout=0, channels_last=False)
    assert flat.is_contiguous()


def test_normalization_matches_the_pil_path():
    images = uint8_batch(6)
    expected = torch.stack([PIL_NORMALIZE(Image.fromarray(img.numpy())) for img in images])
    torch.testing.assert_close(normalize(images, SCALE, SHIFT), expected, atol=1e-5, rtol=0)


def test_denormalize_inverts_normalize():
    images = uint8_batch(4)
    mean, std = channel_tensor(CIFAR10_MEAN), channel_tensor(CIFAR10_STD)
    back = denormalize(normalize(images, SCALE, SHIFT), mean, std)
    torch.testing.assert_close(back, images.permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)


def test_cutout_zeroes_a_square_clipped_at_the_border():
    mask = cutout_mask(torch.tensor([16, 0]), torch.tensor([16, 0]), 8, SIZE)
    assert mask[0].sum() == 64 and mask[0, 12:20, 12:20].all()
    assert mask[1].sum() == 16  # the corner square keeps its 4x4 inside part
    out = augment(pad(uint8_batch(16), 4), codes(16, cutout=8), SCALE, SHIFT, padding=4, flip=True, cutout=8)
    zeros_per_image = (out == 0).all(dim=1).flatten(1).sum(dim=1)
    assert ((zeros_per_image >= 16) & (zeros_per_image <= 64)).all()


def test_input_dtype_follows_the_precision():
    assert input_dtype("bf16-mixed") == input_dtype("bf16-true") == torch.bfloat16
    assert input_dtype("16-mixed") == torch.float16 and input_dtype("64-true") == torch.float64
    assert input_dtype("32-true") == input_dtype("32") == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_augmentation_matches_the_cpu_given_the_same_draws():
    padded, packed = pad(uint8_batch(16), 4), codes(16, cutout=8)
    cpu = augment(padded, packed, SCALE, SHIFT, padding=4, flip=True, cutout=8)
    gpu = augment(padded.cuda(), packed.cuda(), SCALE.cuda(), SHIFT.cuda(), padding=4, flip=True, cutout=8)
    torch.testing.assert_close(gpu.cpu(), cpu)
