"""Data in Champ's layout: shared readers (:mod:`.layout`) and the SynthDance generator (:mod:`.synthdance`)."""

from .layout import CHAMP_GUIDANCE_TYPES, IMAGE_FOLDER, MASK_FOLDER, list_frames, read_guidance_folder

__all__ = ["CHAMP_GUIDANCE_TYPES", "IMAGE_FOLDER", "MASK_FOLDER", "list_frames", "read_guidance_folder"]
