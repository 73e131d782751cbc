"""A small explicit model registry: `@register_model` on named factory functions."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from unweather.errors import UnweatherError

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}


class UnknownModelError(UnweatherError, KeyError):
    """Raised for a model name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(factory: ModelFactory) -> ModelFactory:
    """Register `factory` under its function name."""
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = factory
    return factory


def names() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_MODELS)


def describe(name: str) -> str:
    """Return the first line of the docstring of model `name`'s factory."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(names())}")
    doc = (_MODELS[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def build(name: str, **options: object) -> nn.Module:
    """Build the registered model `name` with `options`.

    The returned module records `arch` and `arch_options`, which `save` writes into a checkpoint's
    metadata so that loading needs nothing else.
    """
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(names())}")
    model = _MODELS[name](**options)
    model.arch = name
    model.arch_options = dict(options)
    return model
