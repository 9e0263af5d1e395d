import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # `import common` from the bench files
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # lets the triton backend import; it is not timed on CPU
