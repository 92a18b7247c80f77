"""What every file twincast writes says about itself: the visible label, the invisible
marks and the signed Content Credentials, as one setting for the offline commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from avatar.credentials import SigningConfig
from avatar.label import LabelConfig
from avatar.watermark import WatermarkConfig


@dataclass(frozen=True)
class Provenance:
    label: LabelConfig = field(default_factory=LabelConfig)
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
