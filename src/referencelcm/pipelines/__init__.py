from .pipeline_output import ReferenceLCMPipelineOutput
from .pipeline_referencelcm import ReferenceLCMPipeline

__all__ = ["ReferenceLCMPipeline", "ReferenceLCMPipelineOutput"]
