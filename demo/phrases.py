"""How people ask for the demo tools: paraphrase templates, slot values and value mappings.

One generator per tool of ``demo.catalog``: each picks one of its 3-5 templates, draws slot
values from the lists below, and returns the query together with the exact arguments a correct
call carries. Some values must be mapped rather than copied ("°F" -> fahrenheit, "yen" -> JPY,
"on foot" -> walking, "Apple" -> AAPL, "four" -> 4, "7 pm" -> 19:00). Numbers are written in the
query exactly as JSON writes them, so copying is always right (token by token: the demo policy's
tokenizer makes every whole number below 1000 one token).

Called by ``demo.corpus`` only. Deliberately plain data and small functions: adding a
template or a value is a one-line change, and nothing here knows about tokenizers or training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

Args = dict[str, Any]
Generator = Callable[[random.Random], tuple[int, str, Args]]

CITIES = [
    "Paris",
    "London",
    "Tokyo",
    "Berlin",
    "Madrid",
    "Rome",
    "Lisbon",
    "Oslo",
    "Cairo",
    "Lima",
    "Sydney",
    "Toronto",
    "Seoul",
    "Mumbai",
    "Boston",
    "Denver",
    "Dublin",
    "Vienna",
    "Prague",
    "Zurich",
    "Athens",
    "Warsaw",
    "Nairobi",
    "Bangkok",
    "Chicago",
    "Miami",
    "Seattle",
    "Montreal",
    "Istanbul",
    "Stockholm",
    "Helsinki",
    "Amsterdam",
    "Brussels",
    "Munich",
    "Milan",
    "Barcelona",
    "Porto",
    "Kyoto",
    "Osaka",
    "Shanghai",
    "Singapore",
    "Dubai",
    "New York",
    "San Francisco",
    "Buenos Aires",
    "Cape Town",
]
PLACES = [
    "Central Station",
    "City Hall",
    "the airport",
    "Union Square",
    "the museum",
    "Main Street",
    "the harbour",
    "Hotel Astoria",
    "the stadium",
    "Riverside Park",
    "the university",
    "Old Town",
]
UNIT_PHRASES = {
    "in Fahrenheit": "fahrenheit",
    "in °F": "fahrenheit",
    "in degrees Fahrenheit": "fahrenheit",
    "in fahrenheit": "fahrenheit",
    "in Celsius": "celsius",
    "in °C": "celsius",
    "in degrees Celsius": "celsius",
    "in metric": "celsius",
}
CURRENCY_NAMES = {
    "dollars": "USD",
    "US dollars": "USD",
    "euros": "EUR",
    "pounds": "GBP",
    "British pounds": "GBP",
    "yen": "JPY",
    "Japanese yen": "JPY",
    "Swiss francs": "CHF",
    "Canadian dollars": "CAD",
    "Australian dollars": "AUD",
    "yuan": "CNY",
    "rupees": "INR",
    "Swedish kronor": "SEK",
    "Mexican pesos": "MXN",
    "Brazilian reais": "BRL",
}
CURRENCY_CODES = sorted(set(CURRENCY_NAMES.values()))
WEEKDAYS = {
    "Monday": "Monday",
    "Tuesday": "Tuesday",
    "Wednesday": "Wednesday",
    "Thursday": "Thursday",
    "Friday": "Friday",
    "Saturday": "Saturday",
    "Sunday": "Sunday",
    "Mon": "Monday",
    "Tue": "Tuesday",
    "Wed": "Wednesday",
    "Thu": "Thursday",
    "Fri": "Friday",
    "Sat": "Saturday",
    "Sun": "Sunday",
}
EVENT_TITLES = [
    "team sync",
    "dentist appointment",
    "lunch with Sam",
    "project review",
    "yoga class",
    "call with Mom",
    "budget meeting",
    "haircut",
    "book club",
    "coffee with Alex",
    "gym session",
    "sprint planning",
    "birthday party",
    "piano lesson",
    "doctor visit",
    "standup",
    "dinner with Lena",
    "job interview",
    "car service",
    "football practice",
]
FIRST_NAMES = [
    "anna",
    "ben",
    "carla",
    "david",
    "emma",
    "farid",
    "grace",
    "hugo",
    "ines",
    "jack",
    "kim",
    "liam",
    "maria",
    "noah",
    "olga",
    "paul",
    "rosa",
    "sam",
    "tara",
    "yuki",
]
LAST_NAMES = ["lee", "smith", "garcia", "kowalski", "tanaka", "muller", "rossi", "silva", "novak", "brown"]
DOMAINS = ["example.com", "gmail.com", "acme.org", "mail.net", "company.io", "outlook.com", "uni.edu"]
SUBJECTS = [
    "quarterly report",
    "dinner on Friday",
    "meeting notes",
    "project update",
    "holiday plans",
    "invoice",
    "new schedule",
    "weekend trip",
    "team lunch",
    "contract draft",
    "birthday gift",
    "flight details",
    "budget review",
    "welcome aboard",
    "job offer",
    "thank you",
]
SEARCHES = [
    "best pizza in Rome",
    "how to bake bread",
    "python tutorials",
    "cheap flights to Lisbon",
    "electric car reviews",
    "history of jazz",
    "easy pasta recipes",
    "how tall is Everest",
    "running shoes for beginners",
    "news about Mars",
    "how to grow tomatoes",
    "museums in Vienna",
    "healthy breakfast ideas",
    "learn guitar chords",
    "weekend hikes near Denver",
    "how to fix a bike chain",
    "best books of the year",
    "train times to Paris",
]
TIMER_PHRASES = {
    "half an hour": 30,
    "an hour": 60,
    "a quarter of an hour": 15,
    "two hours": 120,
    "an hour and a half": 90,
}
TIMER_LABELS = [
    "pasta",
    "tea",
    "laundry",
    "eggs",
    "workout",
    "pizza",
    "bread",
    "meditation",
    "break",
    "study",
    "rice",
    "nap",
]
PHRASES = [
    "good morning",
    "where is the train station",
    "thank you very much",
    "I would like a coffee",
    "how much does this cost",
    "see you tomorrow",
    "the bill please",
    "I am lost",
    "what time is it",
    "nice to meet you",
    "can you help me",
    "I love this city",
    "good night",
    "where is the bathroom",
    "one ticket please",
    "happy birthday",
]
LANGUAGES = {
    "French": "fr",
    "Spanish": "es",
    "German": "de",
    "Italian": "it",
    "Portuguese": "pt",
    "Japanese": "ja",
    "Dutch": "nl",
    "English": "en",
}
COMPANIES = {
    "Apple": "AAPL",
    "Microsoft": "MSFT",
    "Google": "GOOGL",
    "Amazon": "AMZN",
    "Tesla": "TSLA",
    "Nvidia": "NVDA",
    "Meta": "META",
    "Netflix": "NFLX",
    "Intel": "INTC",
    "IBM": "IBM",
    "Disney": "DIS",
    "Nike": "NKE",
    "Boeing": "BA",
    "Adobe": "ADBE",
    "Oracle": "ORCL",
    "Uber": "UBER",
    "Spotify": "SPOT",
    "Pfizer": "PFE",
}
RESTAURANTS = [
    "Chez Marie",
    "Golden Dragon",
    "Sakura",
    "La Piazza",
    "Blue Fin",
    "Casa Lopez",
    "The Green Table",
    "Bistro Central",
    "Spice Garden",
    "Trattoria Roma",
    "Harbour Grill",
    "Noodle House",
    "El Toro",
    "Le Petit Cafe",
    "Olive Tree",
    "Smokehouse",
]
PARTY_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
PM_HOURS = {str(h): h + 12 for h in range(1, 11)}
MUSIC = [
    "Miles Davis",
    "Bohemian Rhapsody",
    "Taylor Swift",
    "Beethoven",
    "Daft Punk",
    "Nina Simone",
    "The Beatles",
    "Mozart",
    "Adele",
    "Coldplay",
    "Norah Jones",
    "Queen",
    "Bob Marley",
    "Chopin",
    "Muddy Waters",
    "Kraftwerk",
    "Billie Eilish",
    "Dire Straits",
]
GENRES = ["jazz", "rock", "pop", "classical", "blues", "electronic"]
MODE_PHRASES = {
    "on foot": "walking",
    "walking": "walking",
    "by car": "driving",
    "driving": "driving",
    "by bus": "transit",
    "by train": "transit",
    "by public transport": "transit",
    "by bike": "cycling",
    "cycling": "cycling",
}
TIP_PERCENTS = [10, 12, 15, 18, 20, 22, 25]
PREFIXES = ["", "", "", "Hey, ", "Hello, ", "Quick question: ", "Hi! ", "Could you help? "]
SUFFIXES = ["", "", "", " please", " thanks", " right now", " asap"]


def amount(rng: random.Random) -> int | float:
    """A money amount people actually say (two significant digits: 40, 75, 120, 2500, 12.5), written
    identically in the query and in JSON. Long free-form numbers are the hardest thing for a tiny
    model to copy digit by digit, and they add nothing to the demo."""
    mantissa = rng.randint(1, 99)
    pick = rng.random()
    if pick < 0.45:
        return mantissa
    if pick < 0.75:
        return mantissa * 10
    if pick < 0.9:
        return mantissa * 100
    return mantissa + 0.5


def num(value: int | float) -> str:
    return str(value)


def hhmm(rng: random.Random) -> str:
    return f"{rng.randint(7, 21):02d}:{rng.choice(['00', '15', '30', '45'])}"


def time_phrase(rng: random.Random) -> tuple[str, str]:
    """A time as the user says it and as HH:MM ("7 pm" -> 19:00, "7:30 pm" -> 19:30, "18:45" as is)."""
    pick = rng.random()
    if pick < 0.5:
        value = hhmm(rng)
        return value, value
    hour = rng.choice(list(PM_HOURS))
    minutes = "00" if pick < 0.8 else "30"
    said = f"{hour} pm" if minutes == "00" else f"{hour}:{minutes} pm"
    return said, f"{PM_HOURS[hour]:02d}:{minutes}"


def _pick(rng: random.Random, mapping: dict[str, Any]) -> tuple[str, Any]:
    key = rng.choice(list(mapping))
    return key, mapping[key]


def weather(rng: random.Random) -> tuple[int, str, Args]:
    city = rng.choice(CITIES)
    phrase, unit = _pick(rng, UNIT_PHRASES)
    t = rng.randrange(5)
    if t == 0:
        return t, f"What's the weather in {city}?", {"city": city}
    if t == 1:
        return t, f"How warm is it in {city} {phrase}?", {"city": city, "unit": unit}
    if t == 2:
        return t, f"Weather for {city} {phrase}", {"city": city, "unit": unit}
    if t == 3:
        return t, f"Is it raining in {city} today?", {"city": city}
    return t, f"Tell me the temperature in {city}, {phrase[3:]}", {"city": city, "unit": unit}


def currency(rng: random.Random) -> tuple[int, str, Args]:
    value = amount(rng)
    src, dst = rng.sample(CURRENCY_CODES, 2)
    names = {code: [n for n, c in CURRENCY_NAMES.items() if c == code] for code in (src, dst)}
    said_src = src if rng.random() < 0.4 else rng.choice(names[src])
    said_dst = dst if rng.random() < 0.4 else rng.choice(names[dst])
    args = {"amount": value, "from_currency": src, "to_currency": dst}
    t = rng.randrange(4)
    if t == 0:
        return t, f"Convert {num(value)} {said_src} to {said_dst}", args
    if t == 1:
        return t, f"How much is {num(value)} {said_src} in {said_dst}?", args
    if t == 2:
        return t, f"I have {num(value)} {said_src}, what is that in {said_dst}?", args
    return t, f"Exchange {num(value)} {said_src} into {said_dst}", args


def event(rng: random.Random) -> tuple[int, str, Args]:
    title = rng.choice(EVENT_TITLES)
    said_day, day = _pick(rng, WEEKDAYS)
    said_time, time = time_phrase(rng)
    t = rng.randrange(4)
    if t == 0:
        return t, f"Add {title} to my calendar on {said_day} at {said_time}", {"title": title, "day": day, "time": time}
    if t == 1:
        return t, f"Schedule {title} for {said_day}", {"title": title, "day": day}
    if t == 2:
        return t, f"Put {title} in my calendar, {said_day} {said_time}", {"title": title, "day": day, "time": time}
    return t, f"Create an event called {title} on {said_day}", {"title": title, "day": day}


def email(rng: random.Random) -> tuple[int, str, Args]:
    first = rng.choice(FIRST_NAMES)
    local = first if rng.random() < 0.5 else f"{first}.{rng.choice(LAST_NAMES)}"
    to = f"{local}@{rng.choice(DOMAINS)}"
    subject = rng.choice(SUBJECTS)
    args = {"to": to, "subject": subject}
    t = rng.randrange(4)
    if t == 0:
        return t, f"Send an email to {to} with the subject {subject}", args
    if t == 1:
        return t, f"Email {to} about {subject}", args
    if t == 2:
        return t, f"Write to {to}, subject: {subject}", args
    return t, f"Mail {to} the subject line {subject}", args


def search(rng: random.Random) -> tuple[int, str, Args]:
    query = rng.choice(SEARCHES)
    n = rng.randint(2, 10)
    t = rng.randrange(4)
    if t == 0:
        return t, f"Search the web for {query}", {"query": query}
    if t == 1:
        return t, f"Look up {query} online", {"query": query}
    if t == 2:
        return t, f"Find {n} results about {query}", {"query": query, "num_results": n}
    return t, f"Google {query} and show me the top {n}", {"query": query, "num_results": n}


def timer(rng: random.Random) -> tuple[int, str, Args]:
    label = rng.choice(TIMER_LABELS)
    if rng.random() < 0.3:
        said, minutes = _pick(rng, TIMER_PHRASES)
    else:
        minutes = rng.randint(1, 90)
        said = f"{minutes} minutes" if minutes > 1 else "1 minute"
    t = rng.randrange(4)
    if t == 0:
        return t, f"Set a timer for {said}", {"minutes": minutes}
    if t == 1:
        return t, f"Start a {label} timer for {said}", {"minutes": minutes, "label": label}
    if t == 2:
        return t, f"Remind me in {said}", {"minutes": minutes}
    return t, f"Timer {said} for the {label}", {"minutes": minutes, "label": label}


def translation(rng: random.Random) -> tuple[int, str, Args]:
    text = rng.choice(PHRASES)
    said, code = _pick(rng, LANGUAGES)
    args = {"text": text, "target_language": code}
    t = rng.randrange(4)
    if t == 0:
        return t, f"Translate '{text}' into {said}", args
    if t == 1:
        return t, f"How do you say '{text}' in {said}?", args
    if t == 2:
        return t, f"What is '{text}' in {said}?", args
    return t, f"Please put '{text}' into {said}", args


def stock(rng: random.Random) -> tuple[int, str, Args]:
    company, symbol = _pick(rng, COMPANIES)
    said = symbol if rng.random() < 0.4 else company
    t = rng.randrange(4)
    if t == 0:
        return t, f"What's the stock price of {said}?", {"symbol": symbol}
    if t == 1:
        return t, f"How is {said} stock doing?", {"symbol": symbol}
    if t == 2:
        return t, f"Get me the latest {said} share price", {"symbol": symbol}
    return t, f"Quote for {said} shares", {"symbol": symbol}


def table(rng: random.Random) -> tuple[int, str, Args]:
    restaurant = rng.choice(RESTAURANTS)
    if rng.random() < 0.5:
        said_people, people = _pick(rng, PARTY_WORDS)
    else:
        people = rng.randint(1, 12)
        said_people = str(people)
    said_time, time = time_phrase(rng)
    args = {"restaurant": restaurant, "party_size": people, "time": time}
    t = rng.randrange(4)
    if t == 0:
        return t, f"Book a table for {said_people} at {restaurant} at {said_time}", args
    if t == 1:
        return t, f"Reserve {restaurant} for {said_people} people at {said_time}", args
    if t == 2:
        return t, f"Can you get us a table at {restaurant}, {said_people} of us, {said_time}?", args
    return t, f"Table for {said_people} at {said_time} at {restaurant}", args


def music(rng: random.Random) -> tuple[int, str, Args]:
    query = rng.choice(MUSIC)
    genre = rng.choice(GENRES)
    t = rng.randrange(4)
    if t == 0:
        return t, f"Play {query}", {"query": query}
    if t == 1:
        return t, f"Put on some {genre} by {query}", {"query": query, "genre": genre}
    if t == 2:
        return t, f"I want to hear {query}", {"query": query}
    return t, f"Play {query}, {genre} please", {"query": query, "genre": genre}


def tip(rng: random.Random) -> tuple[int, str, Args]:
    bill = amount(rng)
    percent = rng.choice(TIP_PERCENTS)
    args = {"bill": bill, "percent": percent}
    t = rng.randrange(4)
    if t == 0:
        return t, f"What's a {percent}% tip on ${num(bill)}?", args
    if t == 1:
        return t, f"Calculate a {percent} percent tip for a bill of {num(bill)}", args
    if t == 2:
        return t, f"How much should I tip on {num(bill)} dollars at {percent}%?", args
    return t, f"Tip {percent}% of {num(bill)}", args


def directions(rng: random.Random) -> tuple[int, str, Args]:
    origin, destination = rng.sample(CITIES + PLACES if rng.random() < 0.5 else PLACES, 2)
    said, mode = _pick(rng, MODE_PHRASES)
    t = rng.randrange(4)
    if t == 0:
        return (
            t,
            f"How do I get from {origin} to {destination} {said}?",
            {"origin": origin, "destination": destination, "mode": mode},
        )
    if t == 1:
        return t, f"Directions from {origin} to {destination}", {"origin": origin, "destination": destination}
    if t == 2:
        return (
            t,
            f"Route to {destination} from {origin} {said}",
            {"origin": origin, "destination": destination, "mode": mode},
        )
    return t, f"Get me from {origin} to {destination}", {"origin": origin, "destination": destination}


GENERATORS: dict[str, Generator] = {
    "get_weather": weather,
    "convert_currency": currency,
    "create_event": event,
    "send_email": email,
    "search_web": search,
    "set_timer": timer,
    "translate": translation,
    "get_stock_price": stock,
    "book_table": table,
    "play_music": music,
    "calculate_tip": tip,
    "get_directions": directions,
}
