"""LazyConfig twin of projects/demo/fcos_R_18_rm_pfi.yaml.

Demo RM + PFI: the distillers of fcos_R_18_rm.py and fcos_R_18_pfi.py together (RM 4, PFI 1.5;
not tuned at demo scale yet).
"""

from collections import OrderedDict

from detectron2.config import LazyCall as L

from kd_det2.modeling.distillers import PFI, RM

from .fcos_R_18_pfi import _LEVELS, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401

model.distillers = L(OrderedDict)(
    RM=L(RM)(num_classes=6, loss_weight=4.0, quality="ctrness", quality_weight=1.0),
    PFI=L(PFI)(
        head_in_features=_LEVELS,
        student_channels={f: 64 for f in _LEVELS},
        teacher_channels={f: 128 for f in _LEVELS},
        loss_weight=1.5,
    ),
)

train.output_dir = "output/demo/kd_fcos_R_18_rm_pfi"
