"""Facts about CIFAR-10 that the rest of the project relies on."""

# Class names in CIFAR-10 label order (batches.meta of the original release); an image folder must use these names.
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SIZE = 32

# Per-channel mean and standard deviation of the 50,000 original CIFAR-10 training images, pixels scaled to [0, 1]
# (every pixel of every training image pooled per channel). They are the values commonly quoted for CIFAR-10; the
# JPEG copy in ../shared/data differs from them by less than 0.003 (see `channel_stats` and docs/normalization.md).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
