"""What the machine can do and what a run asks of it: accelerator, devices and precision."""
