"""Search spaces of the mixup-family methods (issue 3), one table row per method, papers' ranges.

method           param                 default range       source
---------------  --------------------  ------------------  ------------------------------------------------
mixup            mixup_alpha           0.2 .. 4 (log)      004 sec. 4.1: best alpha of {0.2, 0.5, 1, 2, 4}
cutmix           mixup_alpha           0.2 .. 4 (log)      004 sec. 4.1 (same protocol)
kmixup           mixup_alpha           0.1 .. 1 (log)      003 sec. 3: Dirichlet 0.1 (SVHN), 0.5 (CIFAR)
                 k_points (int)        2 .. 4              003: ICT[K], K in {2, 3, 4}
ict              ict_w_max             1 .. 100 (log)      003: w_max = 100 (we also search below it)
                 ict_rampup            0.1 .. 0.6          003: 40% of training
                 mixup_alpha           0.1 .. 1 (log)      003 sec. 3
                 k_points (int)        2 .. 4              003
xmixup           mixup_alpha           2^-3 .. 2^6 (log)   001 sec. 5.3 (beta fixed to 1)
smile            mixup_alpha           0.1 .. 1 (log)      paper gives none; public code 0.2
                 smile_feature_weight  1e-3 .. 1 (log)     paper gives none; public code 0.01
                 smile_source_weight   1e-2 .. 1 (log)     paper gives none; public code 0.1
                 ema_decay             0.99 .. 0.9999      teacher momentum; public code 0.999
automix          mixup_alpha           1 .. 4 (log)        004 sec. 4.5, fig. 9: alpha = 2 best
                 automix_stage (int)   1 .. 3              004 table 11: layer l (3 stages here;
                                                           resnet18/50 have 4: override high)
                 ema_decay             fixed 0.999         004: m starts at 0.999 (override to search)
source_finetune  (none)

A method composed with the sigmoid schedule ("<method>+schedule", see `schedule.arm_name`) also
searches t0, tau, alpha with the schedule family's defaults and returns ``schedule=True``.
"""

from __future__ import annotations

from search_spaces.params import Param

_MIXUP_ALPHA = Param(low=0.2, high=4.0, log=True)
_DIRICHLET_ALPHA = Param(low=0.1, high=1.0, log=True)
_K_POINTS = Param(low=2, high=4, integer=True)

METHOD_DEFAULTS: dict[str, dict[str, Param]] = {
    "source_finetune": {},
    "mixup": {"mixup_alpha": _MIXUP_ALPHA},
    "cutmix": {"mixup_alpha": _MIXUP_ALPHA},
    "kmixup": {"mixup_alpha": _DIRICHLET_ALPHA, "k_points": _K_POINTS},
    "ict": {
        "ict_w_max": Param(low=1.0, high=100.0, log=True),
        "ict_rampup": Param(low=0.1, high=0.6, log=False),
        "mixup_alpha": _DIRICHLET_ALPHA,
        "k_points": _K_POINTS,
    },
    "xmixup": {"mixup_alpha": Param(low=2.0**-3, high=2.0**6, log=True)},
    "smile": {
        "mixup_alpha": Param(low=0.1, high=1.0, log=True),
        "smile_feature_weight": Param(low=1e-3, high=1.0, log=True),
        "smile_source_weight": Param(low=1e-2, high=1.0, log=True),
        "ema_decay": Param(low=0.99, high=0.9999, log=False),
    },
    "automix": {
        "mixup_alpha": Param(low=1.0, high=4.0, log=True),
        "automix_stage": Param(low=1, high=3, integer=True),
        "ema_decay": Param(value=0.999),
    },
}

__all__ = ["METHOD_DEFAULTS"]
