"""Tests-only stand-in for torchvision, which has no CPU build on the test machines.

timm and open_clip import torchvision at module level (transforms, ops.misc), but the ViT and ResNet
code paths that the parity tests use never call into it. Every `torchvision.*` submodule resolves to
a stub module whose attributes are placeholder classes; calling into one raises, so a code path
that really needs torchvision fails loudly instead of silently doing nothing.
"""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+vitjax-test-shim"


class _PlaceholderMeta(type):
    # Enum-like class attributes (InterpolationMode.NEAREST) become distinct, hashable names.
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _Placeholder(metaclass=_PlaceholderMeta):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision is not installed; this is the vitjax test shim")

    def __class_getitem__(cls, item):
        return cls


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (_Placeholder,), {"__module__": self.__name__})
        setattr(self, name, placeholder)
        return placeholder


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_StubFinder())
sys.modules[__name__].__class__ = _StubModule
