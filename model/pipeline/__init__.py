"""The image pipeline, one home for every step, used by the service, the CLIs, export and training.

decode (`decode`) -> resize to the test scale and pad into a bucket (`resize`, `buckets`: the
input policy) -> normalise (`normalize`, the plain-PyTorch reference) -> network -> restore to
the image's size (`restore`: two documented modes) -> render (`render`: PNG / overlay / RLE).
`inference.Segmenter` runs the whole chain mmseg's way (whole, slide, multi-scale + flip).
No Triton and no HTTP here: the GPU drop-ins live in `model.accel`.
"""

from .buckets import InputPolicy, Prepared
from .decode import load_image
from .errors import ImageError
from .inference import Segmenter

__all__ = ["ImageError", "InputPolicy", "Prepared", "Segmenter", "load_image"]
