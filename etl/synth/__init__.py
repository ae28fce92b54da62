"""Synthetic delivery generator: three source-native extracts of UK doctors with
ground truth, calibrated to research/domain.md. See docs/synthetic-data.md."""
from .generate import delivery_config, generate
from .params import TRUE_OR_INDEPENDENT_SURGERY_VS_GP, ErrorModel
from .report import realism_report

__all__ = ["generate", "realism_report", "ErrorModel", "TRUE_OR_INDEPENDENT_SURGERY_VS_GP", "delivery_config"]
