"""The one exception type that the command line turns into a single line of error."""


class UnweatherError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""
