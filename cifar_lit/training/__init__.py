"""The recipe: the LightningModule, its loss and metric sums, SGD groups and LR schedules, and torch.compile's
options, warm-up and cache. Change these freely; the tests say what the numbers must still do."""
