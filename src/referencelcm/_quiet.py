"""Silence one known warning a user cannot act on, precisely, before diffusers or transformers is imported.

transformers 5 warns once per class, on import, that ``CLIPImageProcessor`` (and, through diffusers' IP-adapter
loader, ``SiglipImageProcessor``) "requires torchvision (not installed); falling back to ``...ImageProcessorPil``".
The PIL class is the one this package uses (the bundled ``model_index.json`` names it), so the warning reports the
intended behaviour. Only that message, from that logger, is dropped; every other transformers warning still shows.
"""

from __future__ import annotations

import logging
import re

TORCHVISION_FALLBACK = re.compile(
    r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`"
)
TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"


class TorchvisionFallbackFilter(logging.Filter):
    """Drops the "requires torchvision (not installed); falling back to ...Pil" records, passes all others."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK.search(record.getMessage()) is None


def silence_torchvision_fallback_warning() -> None:
    """Install :class:`TorchvisionFallbackFilter` on transformers' import logger (idempotent)."""
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    if not any(isinstance(existing, TorchvisionFallbackFilter) for existing in logger.filters):
        logger.addFilter(TorchvisionFallbackFilter())
