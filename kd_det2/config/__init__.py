"""kd_det2 configuration: yacs keys and helpers."""

from .defaults import (
    add_fcos_config,
    add_gfl_config,
    add_kd_config,
    get_kd_cfg,
    register_kd_config_hook,
)

__all__ = [
    "add_fcos_config",
    "add_gfl_config",
    "add_kd_config",
    "get_kd_cfg",
    "register_kd_config_hook",
]
