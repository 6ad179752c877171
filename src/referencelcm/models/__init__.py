from .guidance_encoder import GuidanceEncoder, MultiGuidanceEncoder
from .injection import GuidedConvIn, install_guidance_injection, run_denoising_unet
from .motion import set_motion_norm_mode
from .reference_attention import ReferenceAttentionHook, ReferenceBank, install_reference_attention

__all__ = [
    "GuidanceEncoder",
    "GuidedConvIn",
    "MultiGuidanceEncoder",
    "ReferenceAttentionHook",
    "ReferenceBank",
    "install_guidance_injection",
    "install_reference_attention",
    "run_denoising_unet",
    "set_motion_norm_mode",
]
