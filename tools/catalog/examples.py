"""Tiny deterministic tools for examples and the execution verifier's tests.

Each takes JSON-able keyword arguments and returns JSON-able results; ``divide`` raises on a zero
divisor and ``wait`` sleeps, so that failures and timeouts can be exercised for real.
"""

from __future__ import annotations

import time

FUNCTIONS = {
    "add": "tools.catalog.examples:add",
    "divide": "tools.catalog.examples:divide",
    "get_weather": "tools.catalog.examples:get_weather",
    "wait": "tools.catalog.examples:wait",
}


def add(a: float, b: float) -> float:
    return a + b


def divide(a: float, b: float) -> float:
    if b == 0:
        raise ZeroDivisionError("cannot divide by zero")
    return a / b


def get_weather(city: str, unit: str = "celsius") -> dict[str, object]:
    if unit not in ("celsius", "fahrenheit"):
        raise ValueError(f"unknown unit {unit!r}")
    celsius = 10 + sum(map(ord, city.lower())) % 20
    return {"city": city, "temperature": celsius if unit == "celsius" else celsius * 9 / 5 + 32, "unit": unit}


def wait(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
