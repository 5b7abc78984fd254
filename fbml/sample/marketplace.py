"""A deterministic synthetic marketplace with the columns and the mess of the real raw data.

`write_sample` writes ``Products.csv``, ``Images.csv``, ``images/`` and ``sample.json`` under one
folder. Everything is drawn from ``random.Random(seed)`` and ``numpy.random.default_rng(seed)``, so
the same ``(products, seed)`` gives byte-identical files.

Defects (disjoint: each bad row is bad in exactly one way; counts in `SampleDefects`):

- ``bad_price``: a product row whose price is non-empty but not a price (``£abc``, ``free``, ...);
- ``duplicate_id``: a later, otherwise valid product row reusing the id of an earlier clean row;
- ``missing_field``: a product row with an empty ``product_name`` or an empty ``category``;
- ``orphan_images``: an image row whose ``product_id`` is in no product row (its photo file exists
  and is a valid image);
- ``products_without_images``: a clean product row with no image row;
- ``unreadable_photos``: a photo of a clean product that is not an image (text bytes named
  ``.jpg``) or a truncated JPEG.

Rows with a bad price, a missing field or a duplicate id have no image rows of their own, so
every image row except the orphans belongs to a clean product. One clean row has the outlier
price ``£10,000,000.00`` (valid, not a defect).
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import random
import string
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import polars as pl
from PIL import Image, ImageDraw
from tqdm import tqdm

from fbml.files import write_atomically

TOP_LEVEL_CATEGORIES: tuple[str, ...] = (
    "Home & Garden",
    "Office Furniture & Equipment",
    "Computers & Software",
    "Music, Films, Books & Games",
    "Health & Beauty",
    "DIY Tools & Materials",
    "Other Goods",
    "Appliances",
    "Video Games & Consoles",
    "Sports, Leisure & Travel",
    "Phones, Mobile Phones & Telecoms",
    "Clothes, Footwear & Accessories",
    "Baby & Kids Stuff",
)
PRODUCT_COLUMNS = ("", "id", "product_name", "category", "product_description", "price", "location")
IMAGE_COLUMNS = ("", "id", "product_id", "bucket_link", "image_ref", "create_time")
BUCKET_URL = "https://example-bucket.s3.eu-west-1.amazonaws.com/images/"
MIN_DEFECT_PRODUCTS = 20
OUTLIER_PRICE = "£10,000,000.00"
BAD_PRICES = ("£abc", "free", "POA", "£12.50.00", "Swap", "£")

PhotoKind = Literal["rgb", "l", "cmyk", "rgba", "p", "i16", "exif6", "exif8", "not_image", "truncated"]
# Share of the readable photos in each special format; every other readable photo is an RGB JPEG.
_SPECIAL_KINDS: tuple[tuple[PhotoKind, float], ...] = (
    ("l", 0.04),
    ("cmyk", 0.02),
    ("rgba", 0.015),
    ("p", 0.015),
    ("i16", 0.01),
    ("exif6", 0.015),
    ("exif8", 0.015),
)
_PNG_KINDS = frozenset({"rgba", "p", "i16"})
_SHAPES = (  # the shape family of each top-level category, in TOP_LEVEL_CATEGORIES order
    "disc", "square", "triangle", "stripes", "ring", "cross", "star",
    "dots", "zigzag", "frame", "bar", "checker", "wedge",
)  # fmt: skip
_AMBIGUOUS_PHOTO_RATE = 0.12
_OFF_TOPIC_LISTING_RATE = 0.05
_BORROWED_WORD_RATE = 0.1
_TWO_PHOTOS_RATE = 0.6
_CR_DESCRIPTION_RATE = 0.3
_POSTED_BY_RATE = 0.1
_NO_COMMA_LOCATION_RATE = 0.04
_INDEX_GAP_RATE = 0.05
_JPEG_QUALITY = 85
_MAX_SIDE = 700
_MAX_PNG_SIDE = 240
_BACKGROUND_GRID = 6
_NOISE = 4
_HEAVY_NOISE = 6
_HEAVY_NOISE_RATE = 0.05


@attrs.frozen
class _Profile:
    """A top-level category's sub-paths, vocabulary and relative frequency."""

    subpaths: tuple[str, ...]
    nouns: tuple[str, ...]
    words: tuple[str, ...]
    weight: float


_PROFILES: tuple[_Profile, ...] = (
    _Profile(
        subpaths=(
            "Dining, Living Room Furniture / Mirrors, Clocks & Ornaments",
            "Dining, Living Room Furniture / Sofas & Armchairs",
            "Dining, Living Room Furniture / Tables & Chairs",
            "Other Household Goods",
            "Garden & Patio / Garden Furniture",
            "Garden & Patio / Plants, Pots & Planters",
            "Beds & Bedroom Furniture / Wardrobes",
            "Beds & Bedroom Furniture / Beds / Double Beds / Private",
        ),
        nouns=(
            "sofa", "armchair", "mirror", "rug", "floor lamp", "cushions", "curtains", "wardrobe",
            "chest of drawers", "bookcase", "planter", "parasol", "garden bench", "vase", "wall clock",
            "bed frame", "mattress", "dining table", "sideboard", "coffee table",
        ),
        words=("oak", "pine", "velvet", "upholstered", "decorative", "cosy", "rustic", "ceramic", "patio", "bedroom"),
        weight=1.4,
    ),
    _Profile(
        subpaths=(
            "Office Chairs",
            "Desks & Workstations",
            "Filing & Storage",
            "Office Equipment / Shredders",
            "Office Equipment / Printers & Copiers",
            "Presentation Equipment",
            "Office Equipment / Stationery / Paper & Envelopes / Trade",
        ),
        nouns=(
            "office chair", "desk", "filing cabinet", "shredder", "whiteboard", "swivel chair", "workstation",
            "desk pedestal", "stapler", "laminator", "noticeboard", "desk lamp", "paper tray", "meeting table",
            "projector screen",
        ),
        words=("ergonomic", "adjustable", "lockable", "lumbar", "executive", "mesh", "A4", "corporate", "boardroom"),
        weight=1.1,
    ),
    _Profile(
        subpaths=(
            "Laptops",
            "Desktop & Workstation PCs",
            "Computer Monitors",
            "Components / Graphics Cards",
            "Components / Memory & Storage",
            "Keyboards, Mice & Input Devices",
            "Networking / Routers / Wireless Routers",
        ),
        nouns=(
            "laptop", "monitor", "keyboard", "mouse", "graphics card", "motherboard", "PC tower", "SSD",
            "hard drive", "router", "webcam", "RAM", "docking station", "processor", "notebook",
        ),
        words=("Windows", "Intel", "gigabyte", "HDMI", "USB", "wireless", "Linux", "Ryzen", "charger", "backlit"),
        weight=1.05,
    ),
    _Profile(
        subpaths=(
            "Books, Comics & Magazines / Fiction",
            "Books, Comics & Magazines / Non-Fiction",
            "Music / CDs",
            "Music / Vinyl",
            "Musical Instruments / Guitars & Accessories / Electric Guitars",
            "Films & TV / DVDs",
            "Games / Board Games",
        ),
        nouns=(
            "guitar", "vinyl records", "DVD box set", "novel", "paperbacks", "board game", "piano", "drum kit",
            "amplifier", "violin", "CD collection", "jigsaw", "comics", "hardback", "Blu-ray",
        ),
        words=("acoustic", "classic", "album", "edition", "author", "soundtrack", "strings", "series", "chapters"),
        weight=1.05,
    ),
    _Profile(
        subpaths=(
            "Fragrances / Women's Fragrances",
            "Fragrances / Men's Fragrances",
            "Hair Care & Styling",
            "Make Up & Cosmetics",
            "Skin Care",
            "Massage Products",
            "Health Care / Mobility / Walking Aids",
        ),
        nouns=(
            "perfume", "hair dryer", "straighteners", "moisturiser", "makeup palette", "lipstick", "massager",
            "nail kit", "foundation", "aftershave", "serum", "makeup brushes", "face mask", "eau de toilette",
        ),
        words=("skincare", "cosmetic", "fragrance", "vegan", "salon", "glow", "hydrating", "ml", "shade"),
        weight=1.0,
    ),
    _Profile(
        subpaths=(
            "Power Tools / Drills",
            "Power Tools / Saws",
            "Hand Tools",
            "Building Materials / Timber",
            "Plumbing & Central Heating",
            "Ladders & Steps",
            "Power Tools / Sanders & Planers / Belt Sanders",
        ),
        nouns=(
            "drill", "circular saw", "toolbox", "spanner set", "ladder", "workbench", "sander", "jigsaw",
            "paint", "floor tiles", "timber", "screws", "angle grinder", "spirit level", "plasterboard",
        ),
        words=("cordless", "Makita", "DeWalt", "volt", "battery", "blade", "joinery", "trade", "heavy-duty", "bits"),
        weight=0.95,
    ),
    _Profile(
        subpaths=(
            "Collectables",
            "Job Lots",
            "Antiques / Clocks & Barometers",
            "Miscellaneous Goods",
            "Tickets / Concert Tickets",
        ),
        nouns=(
            "job lot", "suitcase", "umbrella", "collectible", "antique", "figurine", "storage boxes", "hamper",
            "gift set", "candles", "bric-a-brac", "souvenir", "badge collection", "coin set", "keyrings",
        ),
        words=("vintage", "assorted", "miscellaneous", "mixed", "bundle", "rare", "retro", "novelty", "memorabilia"),
        weight=0.95,
    ),
    _Profile(
        subpaths=(
            "Fridges & Freezers / Fridge Freezers",
            "Washing Machines",
            "Tumble Dryers",
            "Dishwashers",
            "Small Appliances / Kettles & Toasters",
            "Small Appliances / Microwaves",
            "Ovens, Hobs & Cookers / Electric Cookers",
            "Home Appliances / Vacuum Cleaners / Cordless Vacuums",
        ),
        nouns=(
            "fridge", "freezer", "washing machine", "tumble dryer", "dishwasher", "microwave", "kettle",
            "toaster", "oven", "hob", "vacuum cleaner", "iron", "blender", "slow cooker", "cooker hood",
        ),
        words=("integrated", "freestanding", "energy", "kW", "spin", "litre", "frost-free", "Bosch", "Hotpoint"),
        weight=0.9,
    ),
    _Profile(
        subpaths=(
            "Consoles / PlayStation",
            "Consoles / Xbox",
            "Consoles / Nintendo",
            "Games",
            "Accessories / Controllers",
            "Accessories / Headsets",
            "Retro Gaming",
        ),
        nouns=(
            "PS4", "PS5", "Xbox", "Nintendo Switch", "controller", "console", "game disc", "gaming headset",
            "Wii", "gamepad", "cartridge", "handheld", "Game Boy", "racing wheel", "charging dock",
        ),
        words=("multiplayer", "joy-con", "digital", "terabyte", "online", "levels", "gamer", "boxed", "FIFA"),
        weight=0.85,
    ),
    _Profile(
        subpaths=(
            "Bicycles / Mountain Bikes",
            "Bicycles / Road Bikes",
            "Fitness & Gym Equipment",
            "Camping & Hiking / Tents",
            "Golf",
            "Water Sports",
            "Fishing / Rods & Poles",
            "Bicycles / Bike Parts / Wheels & Tyres / Road Tyres",
        ),
        nouns=(
            "bike", "treadmill", "dumbbells", "tent", "golf clubs", "football boots", "rucksack", "kayak",
            "weights bench", "exercise bike", "tennis racket", "sleeping bag", "skateboard", "fishing rod",
            "cycle helmet",
        ),
        words=("fitness", "outdoor", "camping", "gym", "mountain", "gears", "cycling", "training", "hiking"),
        weight=0.8,
    ),
    _Profile(
        subpaths=(
            "Mobile Phones / Apple iPhone",
            "Mobile Phones / Samsung",
            "Mobile Phones / Other Brands",
            "Mobile Phone Accessories / Cases & Covers",
            "Mobile Phone Accessories / Chargers & Docks",
            "Home Phones & Answering Machines",
            "Smart Watches",
        ),
        nouns=(
            "iPhone", "Samsung Galaxy", "smartphone", "phone case", "phone charger", "screen protector",
            "SIM card", "landline phone", "earphones", "power bank", "smartwatch", "handset", "cordless phone",
            "car mount", "Pixel",
        ),
        words=("unlocked", "network", "Vodafone", "EE", "GB", "Android", "iOS", "5G", "battery health"),
        weight=0.75,
    ),
    _Profile(
        subpaths=(
            "Women's Clothing / Dresses",
            "Women's Clothing / Coats & Jackets",
            "Men's Clothing / Shirts & Tops",
            "Women's Shoes / Boots",
            "Men's Shoes / Trainers",
            "Bags & Handbags",
            "Jewellery & Watches / Watches / Men's Watches",
        ),
        nouns=(
            "jacket", "coat", "dress", "jeans", "trainers", "boots", "handbag", "scarf", "jumper", "shirt",
            "heels", "hoodie", "wallet", "sunglasses", "wristwatch",
        ),
        words=("size", "cotton", "leather", "designer", "worn", "fit", "wool", "womens", "mens"),
        weight=0.7,
    ),
    _Profile(
        subpaths=(
            "Prams & Strollers",
            "Car Seats & Baby Carriers",
            "Cots & Beds",
            "Toys / Soft Toys",
            "Baby Clothes / 0-3 Months",
            "Feeding / Highchairs",
            "Toys / Outdoor Toys / Trampolines / Garden Trampolines",
        ),
        nouns=(
            "pram", "pushchair", "cot", "car seat", "highchair", "baby monitor", "stroller", "toddler bed",
            "changing mat", "baby bath", "playpen", "baby rocker", "soft toys", "baby carrier", "trampoline",
        ),
        words=("newborn", "months", "toddler", "nursery", "isofix", "folding", "infant", "babies", "cuddly"),
        weight=0.65,
    ),
)

CATEGORY_PATHS: tuple[str, ...] = tuple(
    f"{top} / {subpath}" for top, profile in zip(TOP_LEVEL_CATEGORIES, _PROFILES, strict=True) for subpath in profile.subpaths
)
"""Every category path the sample's listings are filed under (2-5 levels)."""
LISTING_NOUNS: tuple[str, ...] = tuple(noun for profile in _PROFILES for noun in profile.nouns)
"""Every noun the sample's listing titles are made of (ASCII)."""

TOWNS: tuple[tuple[str, str], ...] = (  # (town, county) of the sample's locations
    ("Reading", "Berkshire"), ("Harrogate", "North Yorkshire"), ("Truro", "Cornwall"), ("Kendal", "Cumbria"),
    ("Stirling", "Stirling"), ("Bangor", "Gwynedd"), ("Ipswich", "Suffolk"), ("Norwich", "Norfolk"),
    ("Bath", "Somerset"), ("Exeter", "Devon"), ("Chelmsford", "Essex"), ("Guildford", "Surrey"),
    ("Lincoln", "Lincolnshire"), ("Derby", "Derbyshire"), ("Perth", "Perth & Kinross"),
    ("Aberystwyth", "Ceredigion"), ("Salford", "Manchester"), ("Croydon", "London"), ("Leith", "Edinburgh"),
    ("Paisley", "Renfrewshire"), ("Lisburn", "County Antrim"), ("Newry", "County Down"),
    ("Shrewsbury", "Shropshire"), ("Hereford", "Herefordshire"), ("Canterbury", "Kent"),
    ("Brighton", "East Sussex"), ("Chichester", "West Sussex"), ("Oxford", "Oxfordshire"),
    ("Luton", "Bedfordshire"), ("Stevenage", "Hertfordshire"), ("Durham", "County Durham"),
    ("Whitby", "North Yorkshire"), ("Wrexham", "Wrexham"), ("Inverurie", "Aberdeenshire"),
    ("Llandudno", "Conwy"), ("Taunton", "Somerset"), ("Kidderminster", "Worcestershire"),
    ("Solihull", "West Midlands"), ("Milton Keynes", "Buckinghamshire"), ("Stoke-on-Trent", "Staffordshire"),
)  # fmt: skip
CITIES = ("London", "Glasgow", "Leeds", "Belfast", "Bristol", "Cardiff", "Swansea", "Sheffield")
_FIRST_NAMES = (
    "Amira", "Ben", "chloe", "Dev", "Eilidh", "Fatima", "Gareth", "Hannah", "Ioan", "Jo", "Kwame",
    "Liam", "Marta", "Niamh", "Olu", "Priya", "Rhys", "sam", "Zoë", "Renée", "Siân", "Tomasz",
)  # fmt: skip
_MONTH = "February"
_ADJECTIVES = (
    "great", "lovely", "excellent", "immaculate", "clean", "sturdy", "large", "small", "black",
    "white", "grey", "silver", "genuine", "quality", "spare", "used",
)  # fmt: skip
_BRANDS = ("Argos", "IKEA", "John Lewis", "Amazon Basics", "Tesco", "Next", "Dunelm", "Habitat")
_CATEGORY_SENTENCES = (
    "{Adj} {noun} in {cond}.",
    "Selling my {noun}, {word} and {adj}.",
    "Comes with {noun2} and the original {word} parts.",
    "{Noun} for sale – {adj} {word} model.",
    "Perfect for anyone after a {adj} {noun}.",
    "Includes {noun2}, {word} and box.",
    "{Word} {noun} from {brand}, hardly used.",
    "Owner’s {noun} with {word} details.",
    "“As new” {noun}, {word}.",
)
_FILLER_SENTENCES = (
    "Good condition.", "Collection only.", "Cash on collection.", "No offers.", "Smoke free home.",
    "Open to offers.", "Can deliver locally for a small fee.", "Used a few times.",
    "Selling as no longer needed.", "Moving house so everything must go…", "Don’t miss out!",
    "Pick up from {town}.", "£{n} ono.", "Bargain at £{n}!", "Price is firm.", "Quick sale wanted.",
    "A few marks from use (see photos).", "Any questions please ask.", "Ideal for a café or small flat.",
    "👉 Delivery available 🚚", "Still boxed ✨", "Unwanted gift – never used.",
)  # fmt: skip
_CONDITIONS = ("good condition", "excellent condition", "working order", "mint condition", "fair condition")
_NAME_TEMPLATES = (
    "{Word} {noun}",
    "{Brand} {noun}",
    "{Noun}",
    "{Adj} {noun} {word}",
    "{Noun} – {cond}",
    "{Noun} for sale",
    "{Adj} {word} {noun}",
    "Kids’ {noun}",
    "{Noun} (“{word}”)",
)
_NOT_AN_IMAGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>\n"
)


@attrs.frozen
class SampleDefects:
    """How many raw rows or files of each defect the sample has (see the module docstring)."""

    bad_price: int
    duplicate_id: int
    missing_field: int
    orphan_images: int
    products_without_images: int
    unreadable_photos: int


@attrs.frozen
class SampleMarketplace:
    """Where `write_sample` put the sample, and its defect counts."""

    root: Path
    products_csv: Path
    images_csv: Path
    image_dir: Path
    manifest_json: Path
    defects: SampleDefects


@attrs.frozen
class _Roles:
    """Which product rows (0-based) carry which defect; all sets are disjoint."""

    bad_price: tuple[int, ...]
    missing_field: tuple[int, ...]
    no_images: tuple[int, ...]
    duplicate_of: dict[int, int]  # later row -> earlier row whose id it reuses
    photo_hosts: tuple[int, ...]
    outlier: tuple[int, ...]

    def has_images(self, row: int) -> bool:
        """Whether the row gets image rows (clean rows with images, i.e. no product defect)."""
        return row not in self.bad_price + self.missing_field + self.no_images and row not in self.duplicate_of


@attrs.frozen
class _Product:
    """One raw product row (before the index column) and the true category behind it."""

    id: str
    product_name: str | None
    category: str | None
    product_description: str
    price: str
    location: str
    top: int
    day: int


@attrs.frozen
class _Photo:
    """One image row and how to draw its file."""

    id: str
    product_id: str
    top: int
    day: int
    kind: PhotoKind

    @property
    def file_name(self) -> str:
        """``<id>.png`` for the PNG kinds, ``<id>.jpg`` otherwise."""
        return f"{self.id}.{'png' if self.kind in _PNG_KINDS else 'jpg'}"


def write_sample(out_dir: Path, *, products: int = 650, seed: int = 0, progress: bool = False) -> SampleMarketplace:
    """Write a sample marketplace of ``products`` raw product rows under ``out_dir``.

    Below `MIN_DEFECT_PRODUCTS` rows the sample is clean (no defects, no outlier price).
    """
    if products < 1:
        raise ValueError(f"products must be at least 1, got {products}")
    root = Path(out_dir)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    defects = _defect_counts(products)
    roles = _assign_roles(products, defects, rng)
    rows = _products(products, roles, rng)
    photos = _photos(rows, roles, defects, rng)
    sample = SampleMarketplace(
        root=root,
        products_csv=root / "Products.csv",
        images_csv=root / "Images.csv",
        image_dir=image_dir,
        manifest_json=root / "sample.json",
        defects=defects,
    )
    _write_products_csv(sample.products_csv, rows, rng)
    _write_images_csv(sample.images_csv, photos, rng)
    _write_photos(image_dir, photos, np.random.default_rng(seed), progress=progress)
    _write_manifest(sample.manifest_json, seed, products, defects)
    return sample


def _defect_counts(products: int) -> SampleDefects:
    """0.5% of each row defect, 1.5% products without images, one non-image and one truncated photo."""
    if products < MIN_DEFECT_PRODUCTS:
        return SampleDefects(0, 0, 0, 0, 0, 0)
    few = max(1, round(products * 0.005))
    return SampleDefects(
        bad_price=few,
        duplicate_id=few,
        missing_field=few,
        orphan_images=few,
        products_without_images=max(1, round(products * 0.015)),
        unreadable_photos=2,
    )


def _assign_roles(products: int, defects: SampleDefects, rng: random.Random) -> _Roles:
    """Disjoint random rows for each product defect, the unreadable photos and the outlier price."""
    sizes = (
        defects.bad_price,
        defects.missing_field,
        defects.products_without_images,
        defects.duplicate_id,
        defects.duplicate_id,
        defects.unreadable_photos,
        int(defects.bad_price > 0),  # the outlier price comes with the defects
    )
    order = rng.sample(range(products), sum(sizes))
    bounds = np.cumsum((0, *sizes))
    bad, missing, no_images, later, earlier, hosts, outlier = (
        tuple(order[start:stop]) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    )
    pairs = (sorted(pair) for pair in zip(later, earlier, strict=True))
    return _Roles(
        bad_price=bad,
        missing_field=missing,
        no_images=no_images,
        duplicate_of={late: early for early, late in pairs},
        photo_hosts=hosts,
        outlier=outlier,
    )


def _products(products: int, roles: _Roles, rng: random.Random) -> list[_Product]:
    """The raw product rows, defects applied."""
    weights = [profile.weight for profile in _PROFILES]
    tops = rng.choices(range(len(_PROFILES)), weights=weights, k=products)
    listings = [_listing(top, rng) for top in tops]
    return [_with_defect(index, row, listings, roles) for index, row in enumerate(listings)]


def _with_defect(index: int, row: _Product, rows: Sequence[_Product], roles: _Roles) -> _Product:
    """The row with the defect its role gives it (if any)."""
    if index in roles.bad_price:
        return attrs.evolve(row, price=BAD_PRICES[roles.bad_price.index(index) % len(BAD_PRICES)])
    if index in roles.missing_field:
        missing = "product_name" if roles.missing_field.index(index) % 2 == 0 else "category"
        return attrs.evolve(row, product_name=None) if missing == "product_name" else attrs.evolve(row, category=None)
    if index in roles.duplicate_of:
        return attrs.evolve(row, id=rows[roles.duplicate_of[index]].id)
    if index in roles.outlier:
        return attrs.evolve(row, price=OUTLIER_PRICE)
    return row


def _listing(top: int, rng: random.Random) -> _Product:
    """A clean listing in category ``top``; a few are written in another category's words."""
    text_top = rng.randrange(len(_PROFILES)) if rng.random() < _OFF_TOPIC_LISTING_RATE else top
    subpath = rng.choice(_PROFILES[top].subpaths)
    town, location = _location(rng)
    day = rng.randint(10, 28)
    core = _name_core(text_top, rng)
    return _Product(
        id=_uuid(rng),
        product_name=f"{core} | in {location} | Gumtree",
        category=f"{TOP_LEVEL_CATEGORIES[top]} / {subpath}",
        product_description=_description(core, text_top, subpath, town, day, rng),
        price=_price(rng),
        location=location,
        top=top,
        day=day,
    )


def _uuid(rng: random.Random) -> str:
    """A random UUID4 drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _location(rng: random.Random) -> tuple[str, str]:
    """(town, ``Town, County``); a few locations are a bare city with no comma."""
    if rng.random() < _NO_COMMA_LOCATION_RATE:
        city = rng.choice(CITIES)
        return city, city
    town, county = rng.choice(TOWNS)
    return town, f"{town}, {county}"


def _slots(top: int, rng: random.Random, town: str = "") -> dict[str, str]:
    """Template slot values: words of category ``top``, some borrowed from other categories."""
    noun, noun2, word = _word(top, "nouns", rng), _word(top, "nouns", rng), _word(top, "words", rng)
    adj = rng.choice(_ADJECTIVES)
    return {
        "noun": noun,
        "Noun": _capitalised(noun),
        "noun2": noun2,
        "word": word,
        "Word": _capitalised(word),
        "adj": adj,
        "Adj": _capitalised(adj),
        "brand": rng.choice(_BRANDS),
        "Brand": rng.choice(_BRANDS),
        "cond": rng.choice(_CONDITIONS),
        "town": town,
        "n": str(rng.choice((5, 10, 15, 20, 25, 40, 50, 80, 120))),
    }


def _word(top: int, kind: Literal["nouns", "words"], rng: random.Random) -> str:
    """A noun or descriptive word of category ``top``, or now and then of another category."""
    source = rng.randrange(len(_PROFILES)) if rng.random() < _BORROWED_WORD_RATE else top
    words: Sequence[str] = getattr(_PROFILES[source], kind)
    return rng.choice(words)


def _capitalised(text: str) -> str:
    """First letter upper case, the rest unchanged (keeps ``iPhone``-style words intact)."""
    return text[:1].upper() + text[1:]


def _name_core(top: int, rng: random.Random) -> str:
    """A listing title without its location suffix."""
    return rng.choice(_NAME_TEMPLATES).format(**_slots(top, rng))


def _description(core: str, top: int, subpath: str, town: str, day: int, rng: random.Random) -> str:
    """Category sentences and shared filler; some ``Posted by`` lines, some bare ``\\r`` breaks."""
    sentences = [rng.choice(_CATEGORY_SENTENCES).format(**_slots(top, rng, town)) for _ in range(rng.randint(1, 3))]
    sentences += [rng.choice(_FILLER_SENTENCES).format(**_slots(top, rng, town)) for _ in range(rng.randint(1, 3))]
    rng.shuffle(sentences)
    separator = "\r" if rng.random() < _CR_DESCRIPTION_RATE else " "
    body = separator.join(sentences)
    if rng.random() >= _POSTED_BY_RATE:
        return body
    levels = subpath.split(" / ")[-2:]
    posted = f"{core}. Posted by {rng.choice(_FIRST_NAMES)} in {', '.join(levels)} in {town}. {day} {_MONTH} 2022"
    return posted + body


def _price(rng: random.Random) -> str:
    """``£12.00``-style price, log-normal, mostly whole pounds, a few over £1,000."""
    pounds = max(1, int(math.exp(rng.gauss(3.6, 1.3))))
    pence = rng.choice((0, 0, 0, 0, 0, 50, 99, 49))
    return f"£{pounds + pence / 100:,.2f}"


def _photos(rows: Sequence[_Product], roles: _Roles, defects: SampleDefects, rng: random.Random) -> list[_Photo]:
    """Image rows: 1 or 2 per clean product, the orphans at random places, file kinds assigned."""
    photos = [
        _Photo(id=_uuid(rng), product_id=row.id, top=row.top, day=row.day, kind="rgb")
        for index, row in enumerate(rows)
        if roles.has_images(index)
        for _ in range(2 if rng.random() < _TWO_PHOTOS_RATE else 1)
    ]
    for _ in range(defects.orphan_images):
        top, day = rng.randrange(len(_PROFILES)), rng.randint(10, 28)
        orphan = _Photo(id=_uuid(rng), product_id=_uuid(rng), top=top, day=day, kind="rgb")
        photos.insert(rng.randint(0, len(photos)), orphan)
    return _with_kinds(photos, [rows[host].id for host in roles.photo_hosts], rng)


def _with_kinds(photos: list[_Photo], host_ids: Sequence[str], rng: random.Random) -> list[_Photo]:
    """The hosts' first photos unreadable, a random few of the others in each special format."""
    unreadable: tuple[PhotoKind, ...] = ("not_image", "truncated")
    first_photo: dict[str, int] = {}
    for index, photo in enumerate(photos):
        first_photo.setdefault(photo.product_id, index)
    kinds: dict[int, PhotoKind] = {first_photo[host]: kind for host, kind in zip(host_ids, unreadable, strict=False)}
    readable = [index for index in range(len(photos)) if index not in kinds]
    counts = [max(1, round(share * len(readable))) for _, share in _SPECIAL_KINDS]
    chosen = rng.sample(readable, min(sum(counts), len(readable)))
    bounds = np.cumsum((0, *counts))
    for (kind, _), start, stop in zip(_SPECIAL_KINDS, bounds[:-1], bounds[1:], strict=True):
        kinds.update(dict.fromkeys(chosen[start:stop], kind))
    return [attrs.evolve(photo, kind=kinds.get(index, "rgb")) for index, photo in enumerate(photos)]


def _index_column(count: int, rng: random.Random) -> list[str]:
    """The unnamed integer index: increasing, with a few gaps like the real tables."""
    index, values = 0, []
    for _ in range(count):
        values.append(str(index))
        index += 2 if rng.random() < _INDEX_GAP_RATE else 1
    return values


def _write_products_csv(path: Path, rows: Sequence[_Product], rng: random.Random) -> None:
    """``Products.csv`` with the real header and an unnamed index column."""
    columns = {
        "": _index_column(len(rows), rng),
        **{name: [getattr(row, name) for row in rows] for name in PRODUCT_COLUMNS[1:]},
    }
    _write_csv(path, columns)


def _write_images_csv(path: Path, photos: Sequence[_Photo], rng: random.Random) -> None:
    """``Images.csv`` in the long form: bucket link, a 16-character image_ref and a date."""
    alphabet = string.ascii_letters + string.digits
    columns = {
        "": _index_column(len(photos), rng),
        "id": [photo.id for photo in photos],
        "product_id": [photo.product_id for photo in photos],
        "bucket_link": [BUCKET_URL + photo.file_name for photo in photos],
        "image_ref": ["".join(rng.choices(alphabet, k=16)) for _ in photos],
        "create_time": [f"2022-02-{photo.day:02d}" for photo in photos],
    }
    _write_csv(path, columns)


def _write_csv(path: Path, columns: Mapping[str, Sequence[str | None]]) -> None:
    write_raw_table(pl.DataFrame(columns, schema=dict.fromkeys(columns, pl.String)), path)


def write_raw_table(frame: pl.DataFrame, path: Path) -> None:
    """``frame`` as the marketplace's CSVs are: a bare header (the index column's name empty, unquoted),
    fields quoted only where they must be (a ``\\r`` is), ``\\n`` line ends, UTF-8; ``""`` and null stay apart."""
    body = frame.write_csv(include_header=False, quote_style="necessary", line_terminator="\n")
    write_atomically(path, (",".join(frame.columns) + "\n" + body).encode())


def _write_photos(image_dir: Path, photos: Sequence[_Photo], rng: np.random.Generator, *, progress: bool) -> None:
    """Every photo file, and no stale ``.jpg``/``.png`` from an earlier sample."""
    wanted = {photo.file_name for photo in photos}
    for stale in sorted(image_dir.iterdir()):
        if stale.suffix in {".jpg", ".png"} and stale.name not in wanted:
            stale.unlink()
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(_MAX_SIDE, _MAX_SIDE, 3), dtype=np.int16)
    for photo in tqdm(photos, desc="photos", disable=not progress):
        write_atomically(image_dir / photo.file_name, _photo_bytes(photo, noise, rng))


def _write_manifest(path: Path, seed: int, products: int, defects: SampleDefects) -> None:
    """``sample.json``: seed, number of product rows and the defect counts."""
    manifest = {"seed": seed, "products": products, "defects": attrs.asdict(defects)}
    write_atomically(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def _photo_bytes(photo: _Photo, noise: np.ndarray, rng: np.random.Generator) -> bytes:
    """The file content for one photo of its kind."""
    if photo.kind == "not_image":
        return _NOT_AN_IMAGE
    max_side = _MAX_PNG_SIDE if photo.kind in _PNG_KINDS else _MAX_SIDE
    picture = _picture(photo.top, _size(rng, max_side), noise, rng)
    encoded = _encoded(picture, photo.kind, rng)
    return encoded[: len(encoded) * 2 // 5] if photo.kind == "truncated" else encoded


def _size(rng: np.random.Generator, max_side: int) -> tuple[int, int]:
    """(width, height): mostly 100..500 px a side, sometimes 60..700, landscape or portrait."""
    low, high = (100, 500) if rng.random() < 0.85 else (60, 700)
    width, height = rng.integers(low, min(high, max_side) + 1, size=2)
    return int(width), int(height)


def _picture(top: int, size: tuple[int, int], noise: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An RGB picture with category ``top``'s signature: shapes of its family in its hue band.

    Some pictures are ambiguous: they borrow the hue or the shape (or both) of another category.
    Clutter shapes of other families and pixel noise are drawn over every picture.
    """
    hue_top, shape_top = top, top
    if rng.random() < _AMBIGUOUS_PHOTO_RATE:
        other = int(rng.integers(len(_PROFILES)))
        hue_top, shape_top = [(other, top), (top, other), (other, other)][int(rng.integers(3))]
    image = _background(size, rng)
    draw = ImageDraw.Draw(image)
    side = min(size)
    for _ in range(int(rng.integers(0, 3))):
        clutter = (shape_top + 1 + int(rng.integers(len(_SHAPES) - 1))) % len(_SHAPES)
        _draw_shape(draw, _SHAPES[clutter], size, side * rng.uniform(0.06, 0.14), _colour(clutter, rng, 0.5), rng)
    for _ in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
        radius = side * rng.uniform(0.16, 0.34)
        _draw_shape(draw, _SHAPES[shape_top], size, radius, _colour(hue_top, rng, 1.0), rng)
    return Image.fromarray(_noisy(np.asarray(image), noise, rng))


def _background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A soft, low-saturation gradient in a random direction with coarse blotches."""
    start, stop = (np.array(_hsv(rng.random(), rng.uniform(0, 0.25), rng.uniform(0.35, 0.95))) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    steps = np.linspace(0.0, 1.0, _BACKGROUND_GRID)
    ramp = steps[None, :] * math.cos(angle) + steps[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    blotches = rng.uniform(-18, 18, size=(_BACKGROUND_GRID, _BACKGROUND_GRID, 3))
    small = np.clip(start + ramp[..., None] * (stop - start) + blotches, 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def _hsv(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    """An RGB colour (0..255 floats) from HSV in 0..1."""
    red, green, blue = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return red * 255, green * 255, blue * 255


def _colour(top: int, rng: np.random.Generator, strength: float) -> tuple[int, int, int]:
    """A colour in category ``top``'s hue band (13 bands round the wheel, +-10 degrees jitter)."""
    hue = top / len(_PROFILES) + rng.uniform(-10, 10) / 360
    saturation, value = rng.uniform(0.55, 1.0) * strength, rng.uniform(0.55, 1.0)
    red, green, blue = _hsv(hue, saturation, value)
    return int(red), int(green), int(blue)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    size: tuple[int, int],
    radius: float,
    fill: tuple[int, int, int],
    rng: np.random.Generator,
) -> None:
    """One shape of a family at a random place and rotation."""
    centre = (rng.uniform(0.2, 0.8) * size[0], rng.uniform(0.2, 0.8) * size[1])
    angle = rng.uniform(0, 2 * math.pi)
    width = max(2, int(radius * 0.3))
    if shape == "disc":
        draw.ellipse(_box(centre, radius), fill=fill)
    elif shape == "ring":
        draw.ellipse(_box(centre, radius), outline=fill, width=width)
    elif shape == "wedge":
        start = math.degrees(angle)
        draw.pieslice(_box(centre, radius), start, start + 180, fill=fill)
    elif shape == "frame":
        draw.polygon(_placed(_rect(0.8, 0.8), centre, radius, angle), outline=fill, width=width)
    elif shape == "zigzag":
        points = [(-1 + i / 3, 0.5 if i % 2 else -0.5) for i in range(7)]
        draw.line(_placed(points, centre, radius, angle), fill=fill, width=width, joint="curve")
    elif shape == "dots":
        for x, y in _GRID:
            draw.ellipse(_box(_placed([(x, y)], centre, radius, angle)[0], radius * 0.2), fill=fill)
    else:
        for polygon in _POLYGONS[shape]:
            draw.polygon(_placed(polygon, centre, radius, angle), fill=fill)


def _rect(half_width: float, half_height: float, x: float = 0.0, y: float = 0.0) -> list[tuple[float, float]]:
    """A rectangle's corners in unit shape coordinates."""
    return [(x - half_width, y - half_height), (x + half_width, y - half_height),
            (x + half_width, y + half_height), (x - half_width, y + half_height)]  # fmt: skip


def _star(count: int, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
    """``count`` vertices evenly round the centre, their distances cycling through ``radii``."""
    return [
        (radii[i % len(radii)] * math.cos(2 * math.pi * i / count),
         radii[i % len(radii)] * math.sin(2 * math.pi * i / count))
        for i in range(count)
    ]  # fmt: skip


_STEPS = (-1, 0, 1)
_GRID = [(0.7 * i, 0.7 * j) for i in _STEPS for j in _STEPS]
_POLYGONS: dict[str, list[list[tuple[float, float]]]] = {
    "square": [_rect(0.75, 0.75)],
    "triangle": [_star(3)],
    "star": [_star(10, radii=(1.0, 0.45))],
    "cross": [_rect(1.0, 0.28), _rect(0.28, 1.0)],
    "bar": [_rect(1.0, 0.25)],
    "stripes": [_rect(1.0, 0.12, y=y) for y in (-0.75, -0.25, 0.25, 0.75)],
    "checker": [_rect(0.3, 0.3, 0.7 * i, 0.7 * j) for i in _STEPS for j in _STEPS if (i + j) % 2 == 0],
}


def _box(centre: tuple[float, float], radius: float) -> tuple[float, float, float, float]:
    """The bounding box of a circle."""
    x, y = centre
    return (x - radius, y - radius, x + radius, y + radius)


def _placed(
    points: Sequence[tuple[float, float]], centre: tuple[float, float], radius: float, angle: float
) -> list[tuple[float, float]]:
    """Unit shape points rotated by ``angle``, scaled by ``radius`` and moved to ``centre``."""
    cos, sin = math.cos(angle) * radius, math.sin(angle) * radius
    return [(centre[0] + x * cos - y * sin, centre[1] + x * sin + y * cos) for x, y in points]


def _noisy(pixels: np.ndarray, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pixels plus a random crop of the shared noise tile (six times stronger for a few pictures)."""
    height, width = pixels.shape[:2]
    top, left = rng.integers(0, noise.shape[0] - height + 1), rng.integers(0, noise.shape[1] - width + 1)
    crop = noise[top : top + height, left : left + width]
    strength = _HEAVY_NOISE if rng.random() < _HEAVY_NOISE_RATE else 1
    noisy: np.ndarray = np.clip(pixels.astype(np.int16) + crop * strength, 0, 255).astype(np.uint8)
    return noisy


def _encoded(picture: Image.Image, kind: PhotoKind, rng: np.random.Generator) -> bytes:
    """The picture saved in the file format of ``kind``, with fixed options."""
    buffer = io.BytesIO()
    if kind == "l":
        picture.convert("L").save(buffer, "JPEG", quality=_JPEG_QUALITY)
    elif kind == "cmyk":
        picture.convert("CMYK").save(buffer, "JPEG", quality=_JPEG_QUALITY)
    elif kind in {"exif6", "exif8"}:
        _save_rotated(picture, 6 if kind == "exif6" else 8, buffer)
    elif kind == "rgba":
        _with_cutout(picture, rng).save(buffer, "PNG")
    elif kind == "p":
        picture.quantize(64, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG")
    elif kind == "i16":
        grey = np.asarray(picture.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(buffer, "PNG")
    else:
        picture.save(buffer, "JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def _save_rotated(picture: Image.Image, orientation: int, buffer: io.BytesIO) -> None:
    """Store the picture turned so that EXIF ``orientation`` (6 or 8) shows it upright."""
    stored = picture.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(buffer, "JPEG", quality=_JPEG_QUALITY, exif=exif.tobytes())


def _with_cutout(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """RGBA: opaque inside a random ellipse, transparent outside it."""
    width, height = picture.size
    alpha = Image.new("L", picture.size, 0)
    margin_x, margin_y = width * rng.uniform(0.02, 0.12), height * rng.uniform(0.02, 0.12)
    ImageDraw.Draw(alpha).ellipse((margin_x, margin_y, width - margin_x, height - margin_y), fill=255)
    rgba = picture.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba
