"""The surface check of the fake: objects and enums that refuse every public member the real bindings lack."""

from __future__ import annotations

from typing import Any

from fake_tensorrt.surface import SURFACE


class Checked:
    """Base of every fake binding object: public attributes must be members of the real class (``_cls``) in the
    real major version (``_major``), or :class:`AttributeError` names the version, as the real module would."""

    _cls = ""
    _major = 10

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            _check(object.__getattribute__(self, "_major"), object.__getattribute__(self, "_cls"), name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            _check(self._major, self._cls, name)
        object.__setattr__(self, name, value)


def _check(major: int, cls: str, name: str) -> None:
    if name not in SURFACE[major][cls]:
        raise AttributeError(f"tensorrt {major}.x (fake): '{cls}' object has no attribute '{name}'")


class EnumValue:
    """One value of a pybind11 enum: ``.name``, ``int()``, comparable and hashable."""

    def __init__(self, enum: str, name: str, value: int) -> None:
        self.enum, self.name, self.value = enum, name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and (other.enum, other.value) == (self.enum, self.value)

    def __hash__(self) -> int:
        return hash((self.enum, self.value))

    def __repr__(self) -> str:
        return f"<{self.enum}.{self.name}: {self.value}>"


class Enum:
    """A pybind11 enum namespace holding only the values the real enum of this major version has."""

    def __init__(self, major: int, name: str, values: dict[str, int] | None = None) -> None:
        allowed = sorted(SURFACE[major][name])
        self.__name__ = name
        self.__members__ = {}
        for i, v in enumerate(allowed):
            number = (values or {}).get(v, i)
            self.__members__[v] = EnumValue(name, v, number)
            setattr(self, v, self.__members__[v])

    def __getitem__(self, name: str) -> EnumValue:
        return self.__members__[name]


def version_class(base: type, major: int) -> type:
    """``base`` bound to one major version (the surface its instances are checked against)."""
    return type(base.__name__, (base,), {"_major": major})
