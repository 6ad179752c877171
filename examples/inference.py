"""Animate a reference image with a ReferenceLCMPipeline: the same options as ``referencelcm animate``.

    python examples/inference.py                                   # the demo, default model, 4 LCM steps
    python examples/inference.py --model DIR --reference ref.png --guidance video_dir --output out.mp4 --grid
"""

import sys

from referencelcm.cli import main

if __name__ == "__main__":
    sys.exit(main(["animate", *sys.argv[1:]]))
