"""LazyConfig twin of projects/demo/gfl_gkd_bmfi.yaml.

Demo GKD + BMFI: as gfl_gkd.py plus the BMFI terms (alpha 1e-3 foreground, gamma 5e-4 attention,
lambda 5e-6 global, T 0.5); equal widths: no adapter.
"""

from .gfl_gkd import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers.GKD.bmfi_weights = {"fg": 1e-3, "bg": 0.0, "att": 5e-4, "global": 5e-6}
model.distillers.GKD.temperature = 0.5

train.output_dir = "output/demo/kd_gfl_gkd_bmfi"
