"""The ``clearml.Logger``-compatible API of a run (``run.logger``, ``Logger.current_logger()``)."""

from producer.logger.logger import Logger, SeriesInfo

__all__ = ["Logger", "SeriesInfo"]
