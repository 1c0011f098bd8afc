"""`isinstance(module, SomeProtocol)` on every Python the library supports (3.11 and newer).

Python 3.12 changed how `isinstance` checks a runtime-checkable `typing.Protocol`: it looks each
member up with `inspect.getattr_static`, where 3.11 used `hasattr`. An `nn.Module` keeps its
submodules, parameters and buffers in `_modules`, `_parameters` and `_buffers` and hands them out
through `__getattr__`, which `getattr_static` does not call; so on 3.12 and newer
`isinstance(backbone, Backbone)` was False for every backbone, the library's own included, because
its `blocks` is a submodule (seen on Python 3.12.3, benchmarks/RESULTS.md, the run of 2026-11-28
19:26 UTC). The library's protocols take `ModuleProtocolMeta`: where Python's own check says no
for an `nn.Module`, the members are looked up as 3.11 did (an attribute that exists; a method
member set to None does not count, as in Python's check).
"""

import typing
from typing import Any

from torch import nn

__all__ = ["ModuleProtocolMeta"]


class ModuleProtocolMeta(typing._ProtocolMeta):  # the metaclass of typing.Protocol
    def __instancecheck__(cls, obj: Any) -> bool:
        if super().__instancecheck__(obj):
            return True
        members = getattr(cls, "__protocol_attrs__", None)  # set on protocols from Python 3.12; 3.11 checks with hasattr already
        if members is None or not cls.__dict__.get("_is_protocol", False) or not isinstance(obj, nn.Module):
            return False  # a class deriving from a protocol without being one is checked by its bases only, as before
        data = getattr(cls, "__non_callable_proto_members__", None)  # Python 3.13+; 3.12 has no such set
        if data is None:
            data = {m for m in members if not callable(getattr(cls, m, None))}  # an annotation alone or a value: a data member
        for name in members:
            try:
                value = getattr(obj, name)
            except AttributeError:
                return False
            if value is None and name not in data:
                return False  # a method member set to None: not implemented
        return True
