"""Converters from other projects' checkpoints into :class:`~referencelcm.ReferenceLCMPipeline` folders."""

from .champ import ConversionReport, champ_scheduler, convert_champ

__all__ = ["ConversionReport", "champ_scheduler", "convert_champ"]
