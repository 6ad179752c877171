"""``pipe.denoising_unet = torch.compile(pipe.denoising_unet)`` (diffusers' documented speed-up) with the reference
and guidance hooks inside the compiled region.

``fullgraph=True`` makes any graph break an error, so the reference hooks, the CFG drop mask and the guidance
injection are traced as one graph. The backend is ``aot_eager`` (Dynamo + AOTAutograd, PyTorch kernels): tracing is
the part these hooks could break, and inductor's code generation for this tiny UNet takes minutes on a 2-core CPU
(``python benchmarks/bench_inference.py --compile`` times the default backend).
"""

import numpy as np
import torch

from .test_pipeline_referencelcm import generate, make_pipe
from ..conftest import make_inputs, randomize_guidance_encoder


def test_compiled_denoising_unet_matches_eager_and_keeps_the_reference():
    torch.compiler.reset()
    pipe = make_pipe(scheduler="ddim")  # motion D-UNet; CFG: conditional and unconditional (masked) branches
    randomize_guidance_encoder(pipe.guidance_encoder)
    inputs, other_reference = make_inputs(2), make_inputs(2, seed=7)["reference_image"]
    settings = dict(num_inference_steps=2, guidance_scale=2.5)
    eager = generate(pipe, inputs, **settings)
    eager_other = generate(pipe, {**inputs, "reference_image": other_reference}, **settings)

    pipe.denoising_unet = torch.compile(pipe.denoising_unet, backend="aot_eager", fullgraph=True)
    try:
        compiled = generate(pipe, inputs, **settings)
        with torch._dynamo.config.patch(error_on_recompile=True):  # a new reference reuses the compiled graph
            compiled_other = generate(pipe, {**inputs, "reference_image": other_reference}, **settings)
    finally:
        torch.compiler.reset()
    assert np.abs(compiled - eager).max() < 1e-5
    assert np.abs(compiled_other - eager_other).max() < 1e-5
    assert np.abs(compiled_other - compiled).max() > 1e-3  # the compiled D-UNet reads the reference
