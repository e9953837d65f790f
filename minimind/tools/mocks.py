"""current_time, weather, exchange_rate: deterministic MOCKS, for training and testing tool use.

None of these reads the world. Their answers are fixed, so that a training example, an RL reward
and a benchmark's expected answer stay true forever, and every schema description and every
result says they are mocks ("[mock clock]", "[mock weather]", "[mock rates]"; "[模拟…]" in Chinese).

* current_time(timezone): a fixed clock. The instant is the one `at(instant)` set for the code inside
  it, else $MINIMIND_MOCK_NOW (ISO 8601, e.g. "2025-05-20T08:30:00Z"; no zone means UTC), else
  DEFAULT_NOW, shown in the asked time zone:
  a city of the CITIES table (English or Chinese name), an IANA zone ("Asia/Shanghai", via the
  standard library's zoneinfo, so daylight saving time is right for the mock date), or an offset
  ("UTC+8", "-05:00").
* weather(city, unit): each city of CITIES has one fixed weather per day of the mock clock, drawn
  from a hash (CRC-32) of its English name (on DEFAULT_NOW's day) or of "name/YYYY-MM-DD" (on any
  other day): a condition, a temperature in -4..31 °C (-5..0 °C when it snows), humidity and wind.
  Celsius or Fahrenheit (F = C * 9/5 + 32).

Training data sets the clock per conversation (`at`), so that the same city answers differently
and a model has to read the result instead of remembering a city's value; the held-out tasks and
the benchmark keep DEFAULT_NOW.
* exchange_rate(base, quote, amount): fixed demonstration rates (RATES: units per US dollar, roughly
  of 2024), converted through the dollar:  amount * RATES[quote] / RATES[base].

Results are in Chinese when the city or currency was named in Chinese.
"""

from __future__ import annotations

import os
import re
import zlib
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone as dt_timezone
from zoneinfo import ZoneInfo

from .base import Names, ToolError, format_number, is_chinese, short

DEFAULT_NOW = "2025-05-20T08:30:00Z"
NOW_ENV = "MINIMIND_MOCK_NOW"

# (English name, Chinese name, IANA time zone): the capitals of the built-in corpus and a few big cities
CITIES = [
    ("Paris", "巴黎", "Europe/Paris"), ("Berlin", "柏林", "Europe/Berlin"), ("Rome", "罗马", "Europe/Rome"),
    ("Madrid", "马德里", "Europe/Madrid"), ("Lisbon", "里斯本", "Europe/Lisbon"),
    ("London", "伦敦", "Europe/London"), ("Dublin", "都柏林", "Europe/Dublin"),
    ("Amsterdam", "阿姆斯特丹", "Europe/Amsterdam"), ("Brussels", "布鲁塞尔", "Europe/Brussels"),
    ("Bern", "伯尔尼", "Europe/Zurich"), ("Vienna", "维也纳", "Europe/Vienna"), ("Warsaw", "华沙", "Europe/Warsaw"),
    ("Stockholm", "斯德哥尔摩", "Europe/Stockholm"), ("Oslo", "奥斯陆", "Europe/Oslo"),
    ("Helsinki", "赫尔辛基", "Europe/Helsinki"), ("Athens", "雅典", "Europe/Athens"),
    ("Budapest", "布达佩斯", "Europe/Budapest"), ("Moscow", "莫斯科", "Europe/Moscow"),
    ("Beijing", "北京", "Asia/Shanghai"), ("Shanghai", "上海", "Asia/Shanghai"),
    ("Hong Kong", "香港", "Asia/Hong_Kong"), ("Tokyo", "东京", "Asia/Tokyo"), ("Seoul", "首尔", "Asia/Seoul"),
    ("New Delhi", "新德里", "Asia/Kolkata"), ("Jakarta", "雅加达", "Asia/Jakarta"),
    ("Bangkok", "曼谷", "Asia/Bangkok"), ("Hanoi", "河内", "Asia/Ho_Chi_Minh"), ("Manila", "马尼拉", "Asia/Manila"),
    ("Kuala Lumpur", "吉隆坡", "Asia/Kuala_Lumpur"), ("Singapore", "新加坡", "Asia/Singapore"),
    ("Islamabad", "伊斯兰堡", "Asia/Karachi"), ("Kathmandu", "加德满都", "Asia/Kathmandu"),
    ("Ulaanbaatar", "乌兰巴托", "Asia/Ulaanbaatar"), ("Tehran", "德黑兰", "Asia/Tehran"),
    ("Baghdad", "巴格达", "Asia/Baghdad"), ("Riyadh", "利雅得", "Asia/Riyadh"),
    ("Ankara", "安卡拉", "Europe/Istanbul"), ("Kabul", "喀布尔", "Asia/Kabul"),
    ("Phnom Penh", "金边", "Asia/Phnom_Penh"), ("Cairo", "开罗", "Africa/Cairo"), ("Abuja", "阿布贾", "Africa/Lagos"),
    ("Nairobi", "内罗毕", "Africa/Nairobi"), ("Addis Ababa", "亚的斯亚贝巴", "Africa/Addis_Ababa"),
    ("Rabat", "拉巴特", "Africa/Casablanca"), ("Accra", "阿克拉", "Africa/Accra"),
    ("Algiers", "阿尔及尔", "Africa/Algiers"), ("Kampala", "坎帕拉", "Africa/Kampala"),
    ("Dakar", "达喀尔", "Africa/Dakar"), ("Khartoum", "喀土穆", "Africa/Khartoum"),
    ("Harare", "哈拉雷", "Africa/Harare"), ("Antananarivo", "塔那那利佛", "Indian/Antananarivo"),
    ("Washington", "华盛顿", "America/New_York"), ("New York", "纽约", "America/New_York"),
    ("Los Angeles", "洛杉矶", "America/Los_Angeles"), ("Ottawa", "渥太华", "America/Toronto"),
    ("Mexico City", "墨西哥城", "America/Mexico_City"), ("Havana", "哈瓦那", "America/Havana"),
    ("Kingston", "金斯敦", "America/Jamaica"), ("Panama City", "巴拿马城", "America/Panama"),
    ("San Jose", "圣何塞", "America/Costa_Rica"), ("Brasilia", "巴西利亚", "America/Sao_Paulo"),
    ("Buenos Aires", "布宜诺斯艾利斯", "America/Argentina/Buenos_Aires"),
    ("Santiago", "圣地亚哥", "America/Santiago"), ("Lima", "利马", "America/Lima"),
    ("Bogota", "波哥大", "America/Bogota"), ("Caracas", "加拉加斯", "America/Caracas"),
    ("Montevideo", "蒙得维的亚", "America/Montevideo"), ("Canberra", "堪培拉", "Australia/Sydney"),
    ("Sydney", "悉尼", "Australia/Sydney"), ("Wellington", "惠灵顿", "Pacific/Auckland"),
    ("Suva", "苏瓦", "Pacific/Fiji"), ("Port Moresby", "莫尔斯比港", "Pacific/Port_Moresby"),
]

# code -> (units per US dollar, names). Fixed demonstration values, not market data.
RATES = {
    "USD": (1.0, ["US dollar", "dollar", "美元"]), "EUR": (0.92, ["euro", "欧元"]),
    "GBP": (0.79, ["pound sterling", "British pound", "pound", "英镑"]), "JPY": (150.0, ["yen", "日元"]),
    "CNY": (7.2, ["yuan", "renminbi", "RMB", "人民币", "元"]), "KRW": (1350.0, ["won", "韩元"]),
    "INR": (83.0, ["rupee", "印度卢比"]), "RUB": (90.0, ["ruble", "rouble", "卢布"]),
    "CAD": (1.36, ["Canadian dollar", "加元", "加拿大元"]), "AUD": (1.52, ["Australian dollar", "澳元"]),
    "CHF": (0.88, ["Swiss franc", "franc", "瑞士法郎"]), "HKD": (7.8, ["Hong Kong dollar", "港元", "港币"]),
    "SGD": (1.34, ["Singapore dollar", "新加坡元"]), "BRL": (5.0, ["real", "巴西雷亚尔"]),
    "MXN": (17.0, ["Mexican peso", "peso", "墨西哥比索"]),
}

CONDITIONS = [("sunny", "晴"), ("cloudy", "多云"), ("rainy", "雨"), ("windy", "大风"), ("foggy", "雾"), ("snowy", "雪")]
WEEKDAYS = (["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
            ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"])

SCHEMAS = {
    "current_time": {"type": "function", "function": {
        "name": "current_time",
        "description": "MOCK clock: the current date and time in a city or time zone, from a fixed "
                       "demonstration clock (not the real time).",
        "parameters": {"type": "object", "properties": {
            "timezone": {"type": "string", "description": "A city (e.g. Tokyo, 北京), an IANA time zone or UTC."}}}}},
    "weather": {"type": "function", "function": {
        "name": "weather",
        "description": "MOCK weather: a fixed demonstration forecast for a city (not real weather).",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city, e.g. Paris or 巴黎."},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit."}},
            "required": ["city"]}}},
    "exchange_rate": {"type": "function", "function": {
        "name": "exchange_rate",
        "description": "MOCK exchange rates: convert an amount between currencies at fixed demonstration "
                       "rates (not market data).",
        "parameters": {"type": "object", "properties": {
            "base": {"type": "string", "description": "The currency to convert from, e.g. USD or 美元."},
            "quote": {"type": "string", "description": "The currency to convert to, e.g. CNY."},
            "amount": {"type": "number", "description": "How much of the base currency."}},
            "required": ["base", "quote"]}}},
}

_city = Names("city", [(name, row) for row in CITIES for name in row[:2]],
              hint="The mock data covers a fixed list of cities.")
_currency = Names("currency", [(name, code) for code, (_, names) in RATES.items() for name in [code, *names]],
                  listed=list(RATES))


_LABELS_ZH = {"clock": "[模拟时钟]", "weather": "[模拟天气]", "rates": "[模拟汇率]"}


def _label(kind: str, zh: bool) -> str:
    return _LABELS_ZH[kind] if zh else f"[mock {kind}]"


# ---------------------------------------------------------------------------- current_time

_NOW: ContextVar[str | None] = ContextVar("minimind_mock_now", default=None)


@contextmanager
def at(instant: str):
    """Run the mocks inside at another instant (ISO 8601): `with at("2025-01-02T23:10Z"): weather("Paris")`."""
    token = _NOW.set(instant)
    try:
        yield
    finally:
        _NOW.reset(token)


def mock_now() -> datetime:
    """The mock clock's instant (timezone-aware): the one `at` set, $MINIMIND_MOCK_NOW or DEFAULT_NOW."""
    text, source = (_NOW.get(), "mocks.at") if _NOW.get() else (os.environ.get(NOW_ENV) or DEFAULT_NOW, f"${NOW_ENV}")
    try:
        now = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ToolError(f"{source}={short(text)} is not an ISO 8601 time such as {DEFAULT_NOW}") from None
    return now if now.tzinfo else now.replace(tzinfo=dt_timezone.utc)


_OFFSET = re.compile(r"^(?:utc|gmt)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def _zone(name: str) -> tuple[object, tuple | None]:
    """(tzinfo, the city row or None) for a city, "UTC", an offset or an IANA zone name."""
    name = name.strip()
    if len(name) > Names.MAX:
        raise ToolError(f"time zone too long ({len(name)} characters)")
    if name in _city:
        row = _city(name)
        return ZoneInfo(row[2]), row
    if name.upper() in ("", "UTC", "GMT", "Z"):
        return dt_timezone.utc, None
    if m := _OFFSET.match(name):
        hours, minutes = int(m[2]), int(m[3] or 0)
        if hours > 14 or minutes > 59:
            raise ToolError(f"UTC offset {short(name)} out of range (-14:00 .. +14:00)")
        sign = -1 if m[1] == "-" else 1
        return dt_timezone(sign * timedelta(hours=hours, minutes=minutes)), None
    try:
        return ZoneInfo(name), None
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError; bad keys raise ValueError
        raise _city.unknown(name) from None  # neither a city nor a zone: suggest cities


def current_time(timezone: str = "UTC") -> str:
    """'Tuesday 2025-05-20 16:30 in Beijing (UTC+08:00) [mock clock]'."""
    tz, row = _zone(timezone)
    t = mock_now().astimezone(tz)
    offset = t.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}"
    zh = is_chinese(timezone)
    if zh:
        place = row[1] if row else timezone.strip()
        day = f"{t.year}年{t.month}月{t.day}日 {WEEKDAYS[1][t.weekday()]}"
        return f"{place}：{day} {t:%H:%M}（{offset}）{_label('clock', True)}"
    place = row[0] if row else (timezone.strip() or "UTC")
    return f"{WEEKDAYS[0][t.weekday()]} {t:%Y-%m-%d %H:%M} in {place} ({offset}) {_label('clock', False)}"


# ---------------------------------------------------------------------------- weather

def city_weather(english_name: str) -> dict:
    """The mock weather of a city on the mock clock's day: {"condition": (en, zh), "celsius", "humidity",
    "wind_kmh"}."""
    day = mock_now().date().isoformat()
    key = english_name if day == DEFAULT_NOW[:10] else f"{english_name}/{day}"
    h = zlib.crc32(key.encode("utf-8"))
    condition = CONDITIONS[h % len(CONDITIONS)]
    celsius = (h >> 8) % 36 - 4                   # -4 .. 31
    if condition[0] == "snowy":
        celsius = (h >> 8) % 6 - 5                # -5 .. 0: snow needs frost
    return {"condition": condition, "celsius": celsius, "humidity": 30 + (h >> 16) % 61, "wind_kmh": (h >> 24) % 31}


def weather(city: str, unit: str = "celsius") -> str:
    """'Paris: sunny, 18 °C, humidity 40%, wind 12 km/h [mock weather]'."""
    if unit not in ("celsius", "fahrenheit"):
        raise ToolError(f"unit must be celsius or fahrenheit, not {short(unit)}")
    row = _city(city)
    w = city_weather(row[0])
    temp = f"{format_number(w['celsius'] * 9 / 5 + 32)} °F" if unit == "fahrenheit" else f"{w['celsius']} °C"
    if is_chinese(city):
        return (f"{row[1]}：{w['condition'][1]}，{temp}，湿度{w['humidity']}%，风速{w['wind_kmh']} km/h "
                f"{_label('weather', True)}")
    return (f"{row[0]}: {w['condition'][0]}, {temp}, humidity {w['humidity']}%, wind {w['wind_kmh']} km/h "
            f"{_label('weather', False)}")


# ---------------------------------------------------------------------------- exchange_rate

def exchange_rate(base: str, quote: str, amount: float = 1) -> str:
    """'100 USD = 720 CNY (1 USD = 7.2 CNY) [mock rates]'."""
    if not 0 <= amount <= 1e15:
        raise ToolError(f"amount must be between 0 and 1e15, not {format_number(amount)}")
    a, b = _currency(base), _currency(quote)
    rate = RATES[b][0] / RATES[a][0]
    zh = is_chinese(base + quote)
    return (f"{format_number(amount)} {a} = {format_number(amount * rate)} {b} "
            f"(1 {a} = {format_number(rate)} {b}) {_label('rates', zh)}")
