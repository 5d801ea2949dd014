"""Points of interest read from street imagery.

    vlx finetune --schema templates/poi.py --base RUN --data rows.jsonl --out OUT

The root model is `StreetScene` (the model no other model here refers to): the storefronts
visible in one image, left to right. Every string and list is bounded so that the constrained
decoder can derive a token budget, and optional fields are explicit `null`s in the canonical
serialization.
"""

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class Category(str, Enum):
    cafe = "cafe"
    restaurant = "restaurant"
    bakery = "bakery"
    pharmacy = "pharmacy"
    grocery = "grocery"
    bar = "bar"
    bank = "bank"
    clothing = "clothing"
    hardware = "hardware"
    hair_salon = "hair_salon"
    bookstore = "bookstore"
    florist = "florist"


class Day(str, Enum):
    mon = "mon"
    tue = "tue"
    wed = "wed"
    thu = "thu"
    fri = "fri"
    sat = "sat"
    sun = "sun"


class OpeningHours(BaseModel):
    """One line of an opening-hours plaque, e.g. `mon-fri 08:00-18:00`."""

    model_config = ConfigDict(extra="forbid")

    first_day: Day
    last_day: Day
    opens: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, 24 h")
    closes: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, 24 h")


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    house_number: str | None = Field(default=None, pattern=r"^[0-9]{1,4}[a-z]?$")
    street: str | None = Field(default=None, min_length=1, max_length=40)


class POI(BaseModel):
    """A business seen from the street."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, description="as written on the sign")
    category: Category
    address: Address
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 ]{5,16}[0-9]$")
    website: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,30}\.[a-z]{2,4}$")
    opening_hours: list[OpeningHours] = Field(default_factory=list, max_length=3)
    open_24h: bool = False


class StreetScene(BaseModel):
    """Every storefront visible in the image, left to right (none is a valid answer)."""

    model_config = ConfigDict(extra="forbid")

    pois: list[POI] = Field(max_length=3)
