"""referencelcm: fast pose-guided human animation (ReferenceLCM + CoSeC-LCD) for diffusers."""

from ._quiet import silence_torchvision_fallback_warning

silence_torchvision_fallback_warning()  # before diffusers / transformers are imported below

from .models import MultiGuidanceEncoder, ReferenceBank, install_guidance_injection, install_reference_attention
from .pipelines import ReferenceLCMPipeline, ReferenceLCMPipelineOutput

__version__ = "0.1.0"

__all__ = [
    "MultiGuidanceEncoder",
    "ReferenceBank",
    "ReferenceLCMPipeline",
    "ReferenceLCMPipelineOutput",
    "install_guidance_injection",
    "install_reference_attention",
]
