"""Converters from other projects' checkpoints into :class:`~referencelcm.ReferenceLCMPipeline` folders."""

from .champ import ConversionReport, convert_champ
from .champ_config import champ_scheduler, read_champ_config

__all__ = ["ConversionReport", "champ_scheduler", "convert_champ", "read_champ_config"]
