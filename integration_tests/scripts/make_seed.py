"""Write seeds/product_reviews.csv: ~1,000 realistic product reviews, deterministic (seeded RNG).

Varied products, ratings and texts; a few NULL review texts; some exact duplicate texts (short,
common phrasings), so the number of distinct prompts is below the number of rows.

    python integration_tests/scripts/make_seed.py [--rows 1000] [--out integration_tests/seeds/product_reviews.csv]
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import random
from pathlib import Path

PRODUCTS = [
    # (product_id, name, category, [aspects good], [aspects bad])
    ("P-1001", "Aurora Wireless Headphones", "audio",
     ["the noise cancelling is excellent", "battery easily lasts a long flight", "they are light and comfortable"],
     ["the left ear cup started crackling", "the battery drains overnight even when off", "the headband pinches after an hour"]),
    ("P-1002", "Pulse Bluetooth Speaker", "audio",
     ["the bass is surprisingly deep for its size", "pairing took seconds", "it survived a drop into the pool"],
     ["it disconnects when my phone is in another room", "the volume buttons stopped responding", "there is a constant hiss at low volume"]),
    ("P-1003", "Barista One Espresso Machine", "kitchen",
     ["the espresso has a thick crema", "it heats up in under a minute", "the steam wand makes silky milk"],
     ["the water tank leaks onto the counter", "the pump is very loud", "the portafilter handle cracked"]),
    ("P-1004", "SteelBrew Drip Coffee Maker", "kitchen",
     ["the coffee stays hot for hours", "the timer works perfectly", "cleaning the carafe is easy"],
     ["the coffee tastes like plastic", "the carafe drips when pouring", "the display is unreadable in daylight"]),
    ("P-1005", "ChefMate Air Fryer 5L", "kitchen",
     ["fries come out crispy without oil", "the basket is dishwasher safe", "it preheats fast"],
     ["the nonstick coating is peeling", "it smells of burnt plastic", "the fan rattles"]),
    ("P-1006", "TrailRunner GTX Shoes", "sports",
     ["the grip on wet rocks is great", "they are waterproof as promised", "no blisters even on long runs"],
     ["the sole separated after two months", "they run a full size small", "the laces keep coming undone"]),
    ("P-1007", "FlexFit Yoga Mat", "sports",
     ["it does not slip even in hot yoga", "the cushioning is kind to my knees", "it rolls up tightly"],
     ["it has a strong chemical smell", "the surface started flaking", "it curls up at the edges"]),
    ("P-1008", "Summit 40L Hiking Backpack", "outdoors",
     ["the hip belt carries the weight well", "there are pockets for everything", "the rain cover is a nice touch"],
     ["a zipper broke on the first trip", "the shoulder straps dig in", "the stitching came loose at the top handle"]),
    ("P-1009", "LumaDesk LED Lamp", "home",
     ["the light is even and flicker free", "the color temperature is adjustable", "the USB port is handy"],
     ["the touch control is too sensitive", "the arm droops over time", "it buzzes at low brightness"]),
    ("P-1010", "CloudRest Memory Foam Pillow", "home",
     ["my neck pain is gone", "it keeps its shape", "the cover is soft and washable"],
     ["it is far too firm", "it sleeps hot", "the foam smell never went away"]),
    ("P-1011", "ZenVac Robot Vacuum", "home",
     ["it maps the whole flat accurately", "it handles pet hair well", "the app is simple to use"],
     ["it gets stuck under the sofa every day", "the side brush fell off", "it forgets the map after updates"]),
    ("P-1012", "PixelView 27in Monitor", "electronics",
     ["the colors are accurate out of the box", "the stand adjusts in every direction", "text is razor sharp"],
     ["it has a dead pixel in the center", "there is noticeable backlight bleed", "the stand wobbles when I type"]),
    ("P-1013", "SwiftCharge 65W USB-C Charger", "electronics",
     ["it charges my laptop and phone at once", "it is tiny for 65 watts", "it stays cool"],
     ["it gets extremely hot", "it stopped charging my laptop", "the prongs feel loose in the socket"]),
    ("P-1014", "InkJet Pro 300 Printer", "electronics",
     ["the prints are crisp", "wireless setup was painless", "duplex printing works well"],
     ["it jams on every other page", "the ink runs out absurdly fast", "it refuses third party cartridges"]),
    ("P-1015", "KidsPlay Building Blocks 500pc", "toys",
     ["the pieces fit together firmly", "my kids play with it for hours", "the storage box is sturdy"],
     ["several pieces were missing", "the colors faded quickly", "the pieces are too small for young kids"]),
    ("P-1016", "Nimbus Electric Kettle", "kitchen",
     ["it boils water in two minutes", "the temperature presets are useful for tea", "it is quiet"],
     ["the lid does not close properly", "water tastes metallic", "the base stopped working"]),
    ("P-1017", "Glide Ergonomic Office Chair", "furniture",
     ["my back feels much better", "assembly took twenty minutes", "the mesh keeps me cool"],
     ["the armrest broke off", "the gas lift sinks slowly", "it squeaks constantly"]),
    ("P-1018", "Vita Smart Scale", "health",
     ["it syncs with my phone instantly", "the readings are consistent", "it looks sleek"],
     ["the weight jumps by two kilos between readings", "the app keeps crashing", "the batteries died in a month"]),
    ("P-1019", "AquaPure Water Filter Pitcher", "kitchen",
     ["the water tastes noticeably better", "filters are easy to swap", "it fits in the fridge door"],
     ["the lid pops off when pouring", "the filter indicator never worked", "it filters very slowly"]),
    ("P-1020", "Orbit Smartwatch S2", "electronics",
     ["the heart rate tracking is accurate", "battery lasts almost a week", "notifications are reliable"],
     ["the strap gave me a rash", "GPS takes ages to lock", "the screen scratched on day one"]),
    ("P-1021", "Canopy 2-Person Tent", "outdoors",
     ["it pitches in five minutes", "it stayed dry through a storm", "it packs down small"],
     ["a pole snapped in light wind", "condensation soaks everything", "the zip on the door jammed"]),
    ("P-1022", "Brightside Sunscreen SPF50", "health",
     ["it does not leave a white cast", "no breakouts at all", "it absorbs quickly"],
     ["it stung my eyes", "I still got burned", "it feels greasy all day"]),
]

OPENERS_POS = ["Really happy with this.", "Love it!", "Great purchase.", "Exceeded my expectations.",
               "Five stars from me.", "Would buy again.", "Excellent value for money."]
OPENERS_NEG = ["Very disappointed.", "Do not buy.", "Waste of money.", "Returned it.",
               "Not worth the price.", "Awful experience.", "Regret buying this."]
OPENERS_NEU = ["It's okay.", "Mixed feelings.", "Does the job, mostly.", "Average product.",
               "Some good, some bad.", "Not bad, not great."]
CLOSERS_POS = ["Highly recommend.", "I'd recommend it to anyone.", "Already ordered one for my sister.",
               "Shipping was fast too.", ""]
CLOSERS_NEG = ["I would not recommend it.", "Customer support never replied.", "Avoid.",
               "Asked for a refund.", ""]
CLOSERS_NEU = ["Might recommend it if it goes on sale.", "Fine for the price.", "Hard to say if I'd buy it again.", ""]
# Short phrasings many people write verbatim: exact duplicates across rows.
COMMON_TEXTS = {
    5: ["Works great.", "Exactly as described.", "Perfect, thank you!", "Love it!"],
    4: ["Good product.", "Pretty good overall.", "Does what it says."],
    3: ["It's okay.", "Average.", "Fine for the price."],
    2: ["Not great.", "Cheaply made.", "Expected better."],
    1: ["Stopped working after a week.", "Broke on arrival.", "Terrible. Do not buy."],
}
FIRST = ["Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Chris", "Pat",
         "Dana", "Lee", "Robin", "Kim", "Noah", "Emma", "Liam", "Olivia", "Mia", "Lucas"]
LAST = ["S.", "K.", "M.", "B.", "T.", "R.", "W.", "H.", "L.", "P."]
TITLES = {
    "pos": ["Fantastic", "Great buy", "Love it", "Exactly what I needed", "Solid", "Impressed"],
    "neg": ["Broken", "Disappointed", "Avoid", "Poor quality", "Not as advertised", "Returned"],
    "neu": ["OK", "Decent", "Mixed", "Fine I guess", "Average", "Could be better"],
}


def sentiment_for(rating: int, rng: random.Random) -> str:
    if rating >= 4:
        return "pos" if rng.random() < 0.9 else "neu"
    if rating <= 2:
        return "neg" if rng.random() < 0.9 else "neu"
    return "neu"


def review_text(product, rating: int, mood: str, rng: random.Random) -> str:
    _, name, _, good, bad = product
    short_name = name.split(" ", 1)[1] if rng.random() < 0.5 else name
    verb = "are" if short_name.endswith(("s", "Shoes")) else "is"
    g1, g2 = rng.sample(good, 2)
    b1, b2 = rng.sample(bad, 2)
    if mood == "pos":
        parts = [rng.choice(OPENERS_POS), f"The {short_name} {verb} great: {g1}."]
        if rng.random() < 0.5:
            parts.append(f"Also, {g2}.")
        if rng.random() < 0.25:
            parts.append(f"Only complaint: {b1}.")
        parts.append(rng.choice(CLOSERS_POS))
    elif mood == "neg":
        parts = [rng.choice(OPENERS_NEG), f"After {rng.choice(['two days', 'a week', 'a month', 'three months'])}, "
                 f"{b1}."]
        if rng.random() < 0.5:
            parts.append(f"On top of that, {b2}.")
        if rng.random() < 0.2:
            parts.append(f"To be fair, {g1}.")
        parts.append(rng.choice(CLOSERS_NEG))
    else:
        parts = [rng.choice(OPENERS_NEU), f"On the plus side, {g1}, but {b1}.",
                 rng.choice(CLOSERS_NEU)]
    text = " ".join(p for p in parts if p)
    if rng.random() < 0.05:
        text = text.replace(".", "!!", 1)
    if rng.random() < 0.03:
        text = text.lower()
    return text


def make_rows(n: int, seed: int = 20240501):
    rng = random.Random(seed)
    start = dt.date(2024, 1, 1)
    rows = []
    for i in range(1, n + 1):
        product = rng.choice(PRODUCTS)
        rating = rng.choices([1, 2, 3, 4, 5], weights=[12, 10, 16, 27, 35])[0]
        mood = sentiment_for(rating, rng)
        roll = rng.random()
        if roll < 0.03:
            text = None  # rating without a written review
        elif roll < 0.15:
            text = rng.choice(COMMON_TEXTS[rating])
        else:
            text = review_text(product, rating, mood, rng)
        rows.append({
            "review_id": i,
            "product_id": product[0],
            "product_name": product[1],
            "category": product[2],
            "rating": rating,
            "review_title": rng.choice(TITLES[mood]),
            "review_text": text,
            "reviewer": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "verified_purchase": "true" if rng.random() < 0.8 else "false",
            "review_date": (start + dt.timedelta(days=rng.randrange(0, 480))).isoformat(),
        })
    return rows


def main(argv=None) -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=here / "seeds" / "product_reviews.csv")
    args = parser.parse_args(argv)
    rows = make_rows(args.rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    texts = [r["review_text"] for r in rows if r["review_text"] is not None]
    print(f"wrote {len(rows)} rows to {args.out}: {len(set(texts))} distinct texts, "
          f"{len(rows) - len(texts)} NULL")


if __name__ == "__main__":
    main()
