"""The demo tool catalog: twelve everyday tools in OpenAI function format, with deterministic fakes.

Who uses it: the demo's corpus generator (``demo.corpus``) offers these tools in its
synthetic tasks, the demo traffic sends them through the API, and the execution verifier may run
the implementations below (``FUNCTIONS``). Descriptions are short on purpose: they are rendered
into every prompt of a tiny model trained on a 2-core CPU, where prompt tokens are training time.

The implementations answer from a hash of their arguments (no network, no clock), validate what a
real backend would (enums, codes, ranges) and raise ValueError otherwise. This module knows nothing
about query phrasing; that lives with the corpus.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

CURRENCY_CODES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "CNY", "INR", "SEK", "MXN", "BRL")
LANGUAGE_CODES = ("en", "fr", "es", "de", "it", "pt", "ja", "nl")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TEMPERATURE_UNITS = ("celsius", "fahrenheit")
TRAVEL_MODES = ("driving", "walking", "transit", "cycling")
GENRES = ("jazz", "rock", "pop", "classical", "blues", "electronic")


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def _s(description: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    if description:
        out["description"] = description
    out.update(extra)
    return out


TOOLS: list[dict[str, Any]] = [
    _tool(
        "get_weather", "Current weather in a city.", {"city": _s(), "unit": _s(enum=list(TEMPERATURE_UNITS))}, ["city"]
    ),
    _tool(
        "convert_currency",
        "Convert money between currencies.",
        {"amount": {"type": "number"}, "from_currency": _s("ISO code"), "to_currency": _s("ISO code")},
        ["amount", "from_currency", "to_currency"],
    ),
    _tool(
        "create_event",
        "Add an event to the calendar.",
        {"title": _s(), "day": _s(enum=list(WEEKDAYS)), "time": _s("HH:MM")},
        ["title", "day"],
    ),
    _tool("send_email", "Send an email.", {"to": _s(), "subject": _s()}, ["to", "subject"]),
    _tool("search_web", "Search the web.", {"query": _s(), "num_results": {"type": "integer"}}, ["query"]),
    _tool("set_timer", "Start a countdown timer.", {"minutes": {"type": "integer"}, "label": _s()}, ["minutes"]),
    _tool(
        "translate", "Translate text.", {"text": _s(), "target_language": _s("ISO code")}, ["text", "target_language"]
    ),
    _tool("get_stock_price", "Latest stock price.", {"symbol": _s("ticker")}, ["symbol"]),
    _tool(
        "book_table",
        "Reserve a restaurant table.",
        {"restaurant": _s(), "party_size": {"type": "integer"}, "time": _s("HH:MM")},
        ["restaurant", "party_size", "time"],
    ),
    _tool("play_music", "Play music.", {"query": _s("song or artist"), "genre": _s(enum=list(GENRES))}, ["query"]),
    _tool(
        "calculate_tip",
        "Tip for a restaurant bill.",
        {"bill": {"type": "number"}, "percent": {"type": "number"}},
        ["bill", "percent"],
    ),
    _tool(
        "get_directions",
        "Route between two places.",
        {"origin": _s(), "destination": _s(), "mode": _s(enum=list(TRAVEL_MODES))},
        ["origin", "destination"],
    ),
]
TOOLS_BY_NAME: dict[str, dict[str, Any]] = {t["function"]["name"]: t for t in TOOLS}

FUNCTIONS: dict[str, str] = {name: f"demo.catalog:{name}" for name in TOOLS_BY_NAME}
"""Execution-verifier registry: tool name -> ``module:function``."""


# --- deterministic implementations ----------------------------------------------------------------


def _h(*parts: object) -> int:
    """A stable small integer from the arguments (Python's hash() is salted per process)."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def _need(value: str, options: tuple[str, ...], what: str) -> None:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(options)}")


def _hhmm(value: str) -> None:
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
        raise ValueError(f"time must be HH:MM (24-hour), got {value!r}")


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    _need(unit, TEMPERATURE_UNITS, "unit")
    celsius = -5 + _h(city.lower()) % 35
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    sky = ("sunny", "cloudy", "rainy", "windy")[_h(city.lower(), "sky") % 4]
    return {"city": city, "temperature": temperature, "unit": unit, "sky": sky}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict[str, Any]:
    _need(from_currency, CURRENCY_CODES, "currency")
    _need(to_currency, CURRENCY_CODES, "currency")
    if amount < 0:
        raise ValueError("amount must not be negative")
    rate = 1.0 if from_currency == to_currency else 0.2 + (_h(from_currency, to_currency) % 400) / 100
    return {"amount": amount, "from": from_currency, "to": to_currency, "result": round(amount * rate, 2)}


def create_event(title: str, day: str, time: str = "09:00") -> dict[str, Any]:
    _need(day, WEEKDAYS, "day")
    _hhmm(time)
    return {"id": f"evt-{_h(title, day, time) % 10**6:06d}", "title": title, "day": day, "time": time}


def send_email(to: str, subject: str) -> dict[str, Any]:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", to):
        raise ValueError(f"not an email address: {to!r}")
    return {"status": "sent", "id": f"msg-{_h(to, subject) % 10**6:06d}"}


def search_web(query: str, num_results: int = 3) -> dict[str, Any]:
    if not 1 <= num_results <= 20:
        raise ValueError("num_results must be between 1 and 20")
    slug = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")
    return {"results": [f"https://example.com/{slug}/{i + 1}" for i in range(num_results)]}


def set_timer(minutes: int, label: str = "") -> dict[str, Any]:
    if not 1 <= minutes <= 24 * 60:
        raise ValueError("minutes must be between 1 and 1440")
    return {"status": "started", "minutes": minutes, "label": label}


def translate(text: str, target_language: str) -> dict[str, Any]:
    _need(target_language, LANGUAGE_CODES, "language code")
    return {"text": text, "target_language": target_language, "translation": f"[{target_language}] {text}"}


def get_stock_price(symbol: str) -> dict[str, Any]:
    if not re.fullmatch(r"[A-Z]{1,5}", symbol):
        raise ValueError(f"not a ticker symbol: {symbol!r}")
    return {"symbol": symbol, "price": round(20 + (_h(symbol) % 50000) / 100, 2), "currency": "USD"}


def book_table(restaurant: str, party_size: int, time: str) -> dict[str, Any]:
    _hhmm(time)
    if not 1 <= party_size <= 20:
        raise ValueError("party_size must be between 1 and 20")
    return {"status": "booked", "restaurant": restaurant, "party_size": party_size, "time": time}


def play_music(query: str, genre: str | None = None) -> dict[str, Any]:
    if genre is not None:
        _need(genre, GENRES, "genre")
    return {"status": "playing", "query": query, "genre": genre}


def calculate_tip(bill: float, percent: float) -> dict[str, Any]:
    if bill < 0 or not 0 <= percent <= 100:
        raise ValueError("bill must be non-negative and percent between 0 and 100")
    tip = round(bill * percent / 100, 2)
    return {"tip": tip, "total": round(bill + tip, 2)}


def get_directions(origin: str, destination: str, mode: str = "driving") -> dict[str, Any]:
    _need(mode, TRAVEL_MODES, "mode")
    minutes = 5 + _h(origin.lower(), destination.lower(), mode) % 240
    return {"origin": origin, "destination": destination, "mode": mode, "minutes": minutes}
