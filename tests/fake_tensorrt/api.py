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


class Dims:
    """``trt.Dims`` as the bindings return it (pyFoundationalTypes.cpp, 10.x and 11.x): a sequence, not a tuple.

    ``len()`` is ``nbDims``, so the invalid ``Dims{-1}`` that ``getProfileShape`` returns for a name that is not an
    input of the profile (NvInferRuntime.h) raises ValueError on ``len()``, ``tuple()`` and ``bool()``; indexing past
    the end raises IndexError; a slice is a tuple; ``==`` compares with tuples and lists only; it is unhashable (the
    binding defines ``__eq__`` without ``__hash__``).
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, dims: Any = None, nb_dims: int | None = None) -> None:
        self._d = tuple(int(d) for d in (dims or ()))
        self._nb = len(self._d) if nb_dims is None else nb_dims

    @classmethod
    def invalid(cls) -> Dims:
        """``Dims{-1, {}}``: what the engine answers for a tensor or profile it does not have."""
        return cls((), -1)

    def __len__(self) -> int:
        return self._nb  # -1: Python raises ValueError, as it does for the binding's __len__

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self._d[: max(self._nb, 0)][index])
        i = index + self._nb if index < 0 else index
        if not 0 <= i < self._nb:
            raise IndexError("Out of bounds")
        return self._d[i]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (tuple, list)):
            return NotImplemented
        return self._nb == len(other) and all(a == b for a, b in zip(self._d, other, strict=False))

    def __repr__(self) -> str:
        return "(" + ", ".join(map(str, self._d)) + ("," if self._nb == 1 else "") + ")"
