"""unit_converter: length, mass, time, volume, speed and temperature.

Every unit of a quantity is a factor to that quantity's base unit (metre, kilogram, second, litre,
metre per second), so a conversion is two multiplications:

    value_to = value_from * factor_from / factor_to

Temperature is affine, not linear, so it goes through kelvin instead:

    K = C + 273.15        K = (F - 32) * 5/9 + 273.15

Units are matched case-, space- and width-insensitively by symbol, English name (singular or
plural) or Chinese name: "km", "Kilometres", "公里". US customary volumes (gallon, quart, pint, cup,
fluid ounce); a year is 365 days; 斤 and 两 are the Chinese market units (500 g, 50 g).
An unknown unit is answered with the list of known ones.
"""

from __future__ import annotations

import math

from .base import Names, ToolError, format_number

SCHEMA = {"type": "function", "function": {
    "name": "unit_converter",
    "description": "Convert a value between units of length, mass, time, volume, speed or temperature.",
    "parameters": {"type": "object", "properties": {
        "value": {"type": "number", "description": "The amount to convert."},
        "from_unit": {"type": "string", "description": "The unit of the value, e.g. km, lb, °F."},
        "to_unit": {"type": "string", "description": "The unit to convert to, e.g. mi, kg, °C."}},
        "required": ["value", "from_unit", "to_unit"]}}}

# (symbol, quantity, factor to the base unit, other names). Temperature factors are unused (affine).
UNITS = [
    ("m", "length", 1.0, ["meter", "metre", "米"]),
    ("km", "length", 1000.0, ["kilometer", "kilometre", "千米", "公里"]),
    ("cm", "length", 0.01, ["centimeter", "centimetre", "厘米"]),
    ("mm", "length", 0.001, ["millimeter", "millimetre", "毫米"]),
    ("mi", "length", 1609.344, ["mile", "英里"]),
    ("yd", "length", 0.9144, ["yard", "码"]),
    ("ft", "length", 0.3048, ["foot", "feet", "英尺"]),
    ("in", "length", 0.0254, ["inch", "inches", "英寸"]),
    ("nmi", "length", 1852.0, ["nautical mile", "nautical miles", "海里"]),
    ("kg", "mass", 1.0, ["kilogram", "kilo", "千克", "公斤"]),
    ("g", "mass", 0.001, ["gram", "克"]),
    ("mg", "mass", 1e-6, ["milligram", "毫克"]),
    ("t", "mass", 1000.0, ["tonne", "metric ton", "metric tons", "吨"]),
    ("lb", "mass", 0.45359237, ["pound", "lbs", "磅"]),
    ("oz", "mass", 0.028349523125, ["ounce", "盎司"]),
    ("jin", "mass", 0.5, ["斤"]),
    ("liang", "mass", 0.05, ["两"]),
    ("s", "time", 1.0, ["sec", "second", "秒"]),
    ("ms", "time", 0.001, ["millisecond", "毫秒"]),
    ("min", "time", 60.0, ["minute", "分钟"]),
    ("h", "time", 3600.0, ["hr", "hour", "小时"]),
    ("day", "time", 86400.0, ["d", "天", "日"]),
    ("week", "time", 604800.0, ["wk", "周", "星期"]),
    ("year", "time", 31536000.0, ["yr", "年"]),
    ("L", "volume", 1.0, ["l", "liter", "litre", "升"]),
    ("mL", "volume", 0.001, ["milliliter", "millilitre", "毫升"]),
    ("m³", "volume", 1000.0, ["m3", "cubic meter", "cubic metre", "cubic meters", "cubic metres", "立方米"]),
    ("cm³", "volume", 0.001, ["cm3", "cc", "cubic centimeter", "cubic centimetre", "cubic centimeters",
                                "cubic centimetres", "立方厘米"]),
    ("gal", "volume", 3.785411784, ["gallon", "加仑"]),
    ("qt", "volume", 0.946352946, ["quart", "夸脱"]),
    ("pt", "volume", 0.473176473, ["pint", "品脱"]),
    ("cup", "volume", 0.2365882365, ["杯"]),
    ("fl oz", "volume", 0.0295735295625, ["fluid ounce", "fluid ounces", "液量盎司"]),
    ("m/s", "speed", 1.0, ["mps", "meter per second", "metre per second", "meters per second",
                                "metres per second", "米每秒"]),
    ("km/h", "speed", 1 / 3.6, ["kmh", "kph", "kilometer per hour", "kilometre per hour",
                                "kilometers per hour", "kilometres per hour", "千米每小时", "公里每小时"]),
    ("mph", "speed", 0.44704, ["mi/h", "mile per hour", "miles per hour", "英里每小时"]),
    ("kn", "speed", 1852 / 3600, ["knot", "kt", "节"]),
    ("ft/s", "speed", 0.3048, ["fps", "foot per second", "feet per second", "英尺每秒"]),
    ("°C", "temperature", None, ["C", "celsius", "degC", "degree celsius", "degrees celsius", "摄氏度"]),
    ("°F", "temperature", None, ["F", "fahrenheit", "degF", "degree fahrenheit", "degrees fahrenheit", "华氏度"]),
    ("K", "temperature", None, ["kelvin", "开尔文", "开"]),
]



def _names(unit: tuple) -> list[str]:
    """Symbol, names, and the plural of each ASCII name ("miles"; "ms" stays a millisecond)."""
    names = [unit[0], *unit[3]]
    return names + [n + "s" for n in names if n.isascii() and n.isalpha() and len(n) > 1]


_unit = Names("unit", [(name, unit) for unit in UNITS for name in _names(unit)], listed=[u[0] for u in UNITS])


def _to_kelvin(value: float, symbol: str) -> float:
    kelvin = {"°C": value + 273.15, "°F": (value - 32) * 5 / 9 + 273.15, "K": value}[symbol]
    if kelvin < 0:
        raise ToolError(f"{format_number(value)} {symbol} is below absolute zero")
    return kelvin


def _from_kelvin(kelvin: float, symbol: str) -> float:
    return {"°C": kelvin - 273.15, "°F": (kelvin - 273.15) * 9 / 5 + 32, "K": kelvin}[symbol]


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """value in from_unit, expressed in to_unit."""
    if not math.isfinite(value) or abs(value) > 1e100:
        raise ToolError(f"value must be a finite number within ±1e100, not {value!r}")
    (sym_a, kind_a, factor_a, _), (sym_b, kind_b, factor_b, _) = _unit(from_unit), _unit(to_unit)
    if kind_a != kind_b:
        raise ToolError(f"cannot convert {kind_a} ({sym_a}) to {kind_b} ({sym_b})")
    if kind_a == "temperature":
        return _from_kelvin(_to_kelvin(value, sym_a), sym_b)
    return value * factor_a / factor_b


def unit_converter(value: float, from_unit: str, to_unit: str) -> str:
    """The conversion as text, the units spelled as they were asked: "10 km = 6.213712 mi"."""
    result = convert(value, from_unit, to_unit)
    return f"{format_number(value)} {from_unit.strip()} = {format_number(result)} {to_unit.strip()}"
