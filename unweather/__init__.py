"""unweather: remove rain, snow and haze from camera streams and videos in real time."""

__version__ = "0.1.0"
