"""Which dialect answers a request. A route's door names the dialects it speaks, its default first; among them the
base path (`/dialects/<name>/...`) decides, else the request's field names (only the newer body on the HUB v1 URL
can be told apart), else the key's own dialect (set when the key was created), else the door's default.

    door       routes                                                    dialects
    v1         POST /v1/predict/{model}                                  hub, hub-xywhn, hub-images
    predict    POST / (model field, or a key bound to one model),        predict
               POST /dedicated/{model}
    platform   POST /api/models/{owner}/{project}/{model}/predict,       platform
               POST /predict (a key bound to one model), POST /dedicated/{model}/predict
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from gateway.arguments import DIALECT_NAMES, DialectName
from gateway.dialects.base import Dialect
from gateway.dialects.hub import Hub, HubXywhn
from gateway.dialects.images import HubImages, Platform, Predict
from gateway.errors import NotFound

DIALECTS: dict[str, Dialect] = {d.name: d for d in (Hub(), HubXywhn(), HubImages(), Predict(), Platform())}
assert tuple(DIALECTS) == DIALECT_NAMES, "gateway/arguments.py names every dialect, in this order"
BASE = "/dialects"  # a base path that pins a dialect: /dialects/<name>/<the dialect's usual paths>

# On the HUB v1 URL, the newer body's names and the first docs' own: a request with some of the first and none of
# the second is `hub-images` (an `image` part or `size`/`confidence` keep it in the key's HUB dialect).
NEWER = frozenset({"file", "imgsz", "conf"})
FIRST = frozenset({"image", "size", "confidence"})


@dataclass(frozen=True)
class Door:
    """The prediction routes that speak the same dialects (the default first)."""

    name: str
    dialects: tuple[DialectName, ...]


V1 = Door("v1", ("hub", "hub-xywhn", "hub-images"))
PREDICT = Door("predict", ("predict",))
PLATFORM = Door("platform", ("platform",))


def pinned(door: Door, name: str | None) -> Dialect | None:
    """The dialect a base path names (None: no base path); NotFound when it names none of this door's."""
    if name is None:
        return None
    if name not in door.dialects:
        known = ", ".join(DIALECT_NAMES)
        what = f"'{name[:32]}' is not a dialect ({known})" if name not in DIALECTS else f"{name} has no such route"
        raise NotFound(f"Not found: {what}. {BASE}/<dialect> takes the dialect's own paths; see the README's Dialects.")
    return DIALECTS[name]


def first(door: Door, pin: Dialect | None) -> Dialect:
    """The dialect that answers until the request's form is read: the base path's, else the door's default. Errors
    look alike across a door's dialects, so this one answers the key's and the body's errors."""
    return pin or DIALECTS[door.dialects[0]]


def choose(door: Door, pin: Dialect | None, key_dialect: str | None, names: Set[str]) -> Dialect:
    """The dialect that answers, once the request's field and file part names (`names`, non-empty ones) are known."""
    if pin is not None:
        return pin
    if "hub-images" in door.dialects and names & NEWER and not names & FIRST:
        return DIALECTS["hub-images"]
    if key_dialect in door.dialects:
        return DIALECTS[key_dialect]
    return DIALECTS[door.dialects[0]]


def for_path(path: str) -> Dialect:
    """The dialect of an answer no route chose (404, 405, a 500): the base path's, else the Platform's for its
    paths, else the HUB's."""
    if path.startswith(f"{BASE}/"):
        name, _, rest = path[len(BASE) + 1 :].partition("/")
        if name in DIALECTS:
            return DIALECTS[name]
        path = f"/{rest}"
    dedicated = path.startswith("/dedicated/") and path.endswith("/predict")
    platform = path.startswith("/api/") or path == "/predict" or dedicated
    return DIALECTS["platform" if platform else "hub"]
