"""The web demo, as ``referencelcm demo``: a Gradio app on the bundled student and teacher (needs ``.[demo]``).

    python examples/app.py                                  # http://127.0.0.1:7860
    python examples/app.py --model DIR --teacher DIR --host 0.0.0.0 --port 7861
"""

import sys

from referencelcm.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
