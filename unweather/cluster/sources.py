"""Sources files and inputs: moved to `unweather.sources_file` (below both `stream` and `cluster`).

Kept so that `from unweather.cluster.sources import Source, load_sources` goes on working.
"""

from __future__ import annotations

from unweather.media import VIDEO_EXTENSIONS
from unweather.sources_file import (
    Source,
    apply_options,
    expand_inputs,
    is_sources_file,
    is_url,
    load_sources,
    output_path,
    resolve_inputs,
)

__all__ = ["VIDEO_EXTENSIONS", "Source", "apply_options", "expand_inputs", "is_sources_file", "is_url",
           "load_sources", "output_path", "resolve_inputs"]
