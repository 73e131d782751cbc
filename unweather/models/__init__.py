"""The networks: MSBDN-RDFF (the paper's teachers and student), our real-time students, identity.

Each model module is imported here by name, which registers its factories.
"""

from unweather.models import identity, msbdn, student, video  # noqa: F401  (registers models)
from unweather.models.checkpoint import load_checkpoint, read_metadata, save
from unweather.models.ckt import CKT
from unweather.models.flops import count_flops
from unweather.models.padding import PadCrop, pad_to_multiple
from unweather.models.registry import UnknownModelError, build, names, register_model

__all__ = [
    "CKT",
    "PadCrop",
    "UnknownModelError",
    "build",
    "count_flops",
    "load_checkpoint",
    "names",
    "pad_to_multiple",
    "read_metadata",
    "register_model",
    "save",
]
