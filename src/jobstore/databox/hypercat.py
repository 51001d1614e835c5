"""The store's hypercat catalogue (``GET /cat``, ``POST /cat``), validated as core-store does."""

from __future__ import annotations

from typing import Any

import cbor2

from ..errors import BadRequest, TooLarge
from ..store.validation import check_plain

CATALOGUE_METADATA = [
    {"rel": "urn:X-hypercat:rels:isContentType", "val": "application/vnd.hypercat.catalogue+json"},
    {"rel": "urn:X-hypercat:rels:hasDescription:en", "val": "Databox Datasource Catalogue"},
    {"rel": "urn:X-hypercat:rels:hasHomepage", "val": "http://www.databoxproject.uk/"},
    {
        "rel": "urn:X-hypercat:rels:containsContentType",
        "val": "application/vnd.hypercat.catalogue+json",
    },
    {"rel": "urn:X-hypercat:rels:supportsSearch", "val": "urn:X-hypercat:search:simple"},
]
REQUIRED_RELS = ("hasDescription", "isContentType")
# The whole catalogue is one stored value, rewritten by every POST and sent whole by GET: a bound
# on it bounds both. A Databox driver registers an item of about 500 bytes per datasource.
MAX_CATALOGUE_BYTES = 1 << 20


def catalogue(items: list[Any]) -> dict[str, Any]:
    """The whole catalogue document."""
    return {"catalogue-metadata": CATALOGUE_METADATA, "items": items}


def check_item(item: Any) -> dict[str, Any]:
    """Return ``item`` if it is a valid catalogue item, else raise BadRequest saying why."""
    if not isinstance(item, dict) or not isinstance(item.get("href"), str):
        raise BadRequest(
            "a hypercat item must be a map with a text href and an item-metadata array"
        )
    metadata = item.get("item-metadata")
    if not isinstance(metadata, list) or not all(
        isinstance(pair, dict) and isinstance(pair.get("rel"), str) and "val" in pair
        for pair in metadata
    ):
        raise BadRequest("hypercat item-metadata must be an array of {rel, val} maps")
    terms = {term for pair in metadata for term in pair["rel"].split(":")}
    missing = [rel for rel in REQUIRED_RELS if rel not in terms]
    if missing:
        raise BadRequest(f"hypercat item-metadata needs a rel with {' and '.join(missing)}")
    check_plain("item", item)  # GET /cat must be able to send it back as JSON
    return item


def upsert(items: list[Any], item: dict[str, Any]) -> list[Any]:
    """The items with ``item`` first, replacing any item with the same href."""
    return [item, *(old for old in items if old.get("href") != item["href"])]


def bounded(items: list[Any]) -> list[Any]:
    """``items``, or TooLarge when they would pass :data:`MAX_CATALOGUE_BYTES` stored."""
    size = len(cbor2.dumps(items))
    if size > MAX_CATALOGUE_BYTES:
        raise TooLarge(
            f"the catalogue would hold {size} bytes, above its {MAX_CATALOGUE_BYTES}-byte "
            "limit: register fewer or smaller items (an item posted again with the same href "
            "replaces the old one)"
        )
    return items


def job_datasource_item(href: str, dsid: str, description: str) -> dict[str, Any]:
    """The item a driver registers for a job datasource (store type ``job``, an actuator)."""
    return {
        "href": href,
        "item-metadata": [
            {"rel": "urn:X-hypercat:rels:hasDescription:en", "val": description},
            {"rel": "urn:X-hypercat:rels:isContentType", "val": "application/json"},
            {"rel": "urn:X-databox:rels:hasDatasourceid", "val": dsid},
            {"rel": "urn:X-databox:rels:hasStoreType", "val": "job"},
            {"rel": "urn:X-databox:rels:isActuator", "val": True},
        ],
    }
