"""Registry files: checked whole, refused with the entry and field named, upserted in one transaction."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.cli import SeedProgress
from gateway.engine.registry import DEMO_REGISTRY, RegistryError, load_registry, parse_registry
from gateway.engine.tables import seed
from gateway.store import Store, metadata
from tests.demo import STUDY, SUBJECT

pytestmark = pytest.mark.anyio

DEMO: dict[str, Any] = json.loads(DEMO_REGISTRY.read_text())


async def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: equal snapshots mean an unchanged store."""
    async with store.engine.connect() as conn:
        return {
            table.name: sorted((tuple(row) for row in await conn.execute(select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def demo_with(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(DEMO)
    change(data)
    return data


BAD_FILES = [
    pytest.param(lambda d: d["studies"][0].update(id="NOT-A-GUID"), "studies[0].id", id="study-id"),
    pytest.param(lambda d: d["studies"][0].update(modes=["active", "prod"]), "studies[0] (id ", id="study-mode"),
    pytest.param(lambda d: d["studies"][0].update(mhealthSettings=["training"]), ".mhealthSettings", id="settings"),
    pytest.param(lambda d: d["studies"][0].update(modes=[]), ".modes", id="no-modes"),
    pytest.param(lambda d: d["subjects"][1].update(mSubjectId="a/b"), "subjects[1] (id ", id="m-subject"),
    pytest.param(lambda d: d["subjects"][0].pop("mode"), ".mode: is required", id="missing-field"),
    pytest.param(
        lambda d: d["devices"][3].update(connectionType="BLUETOOTH"),
        "devices[3] (inventoryId DEMO-IN-STOCK).connectionType",
        id="connection-type",
    ),
    pytest.param(
        lambda d: d["devices"][2].update(registered="yes"),
        "devices[2] (inventoryId DEMO-UNREGISTERED).registered",
        id="registered",
    ),
    pytest.param(
        lambda d: d["devices"][0].update(instanceId=12),
        "devices[0] (inventoryId DEMO-READY-01).instanceId",
        id="instance-id",
    ),
    pytest.param(
        lambda d: d["devices"][0].update(colour="red"), "devices[0]: unknown field 'colour'", id="unknown-field"
    ),
    pytest.param(
        lambda d: d["devices"].append(dict(d["devices"][0])), "devices[13]: repeats device devices[0]", id="duplicate"
    ),
    pytest.param(
        lambda d: d["devices"][-1].update(dispensedTo="F" * 32),
        "devices[12] (inventoryId DEMO-TEST-MODE).dispensedTo",
        id="dangling-subject",
    ),
    pytest.param(
        lambda d: d["devices"][-1].update(mode="training"),
        "devices[12] (inventoryId DEMO-TEST-MODE).studyId",
        id="dangling-mode",
    ),
    pytest.param(lambda d: d.update(kits=[]), "unknown section 'kits'", id="unknown-section"),
    pytest.param(lambda d: d.update(devices={}), "devices: must be a list", id="section-type"),
]


@pytest.mark.parametrize(("change", "message"), BAD_FILES)
async def test_a_bad_file_is_refused_whole_and_writes_nothing(
    store: Store, tmp_path: Path, change: Any, message: str
) -> None:
    # Every entry but the bad one is new or changed, so a partial write would show.
    data = demo_with(change)
    for device in data["devices"]:
        if isinstance(device, dict) and device.get("inventoryId", "").startswith("DEMO-"):
            device["inventoryId"] = device["inventoryId"].replace("DEMO-", "NEW-")
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data))
    before = await snapshot(store)
    with pytest.raises(RegistryError) as caught:
        await seed(store, load_registry(path))
    assert message.replace("DEMO-", "NEW-") in str(caught.value)
    assert await snapshot(store) == before


async def test_references_are_checked_against_the_store_too(store: Store) -> None:
    # The subject lives in the store only: the new device may be dispensed to it.
    device = {**DEMO["devices"][0], "inventoryId": "LATER-01", "instanceId": "C" * 32}
    await seed(store, parse_registry({"devices": [device]}))
    before = await snapshot(store)
    orphan = {**device, "inventoryId": "LATER-02", "dispensedTo": "E" * 32}
    with pytest.raises(RegistryError, match=r"devices\[0\] \(inventoryId LATER-02\)\.dispensedTo"):
        await seed(store, parse_registry({"devices": [orphan]}))
    assert await snapshot(store) == before


async def test_seeding_upserts(store: Store) -> None:
    changed = demo_with(lambda d: d["devices"][3].update(dispensedTo=SUBJECT))
    await seed(store, parse_registry(changed))
    await seed(store, parse_registry(changed))  # idempotent
    rows = (await snapshot(store))["devices"]
    assert len(rows) == len(DEMO["devices"])
    in_stock = next(row for row in rows if row[2] == "DEMO-IN-STOCK")
    assert in_stock[-1] == SUBJECT


def test_ids_are_normalised_on_load() -> None:
    data = demo_with(lambda d: d["studies"][0].update(id=STUDY.lower()))
    data["subjects"] = []
    data["devices"] = []
    assert parse_registry(data).studies[0].id == STUDY


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(RegistryError, match=r"broken\.json: not valid JSON"):
        load_registry(path)
    with pytest.raises(RegistryError, match="cannot be read"):
        load_registry(tmp_path / "missing.json")


def test_the_demo_registry_is_valid() -> None:
    registry = load_registry(DEMO_REGISTRY)
    assert len(registry.devices) == 13


def test_seeding_shows_progress_on_a_terminal_for_large_files_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert SeedProgress.for_terminal(SeedProgress.LARGE, io.StringIO()) is None  # not a terminal
    assert SeedProgress.for_terminal(SeedProgress.LARGE - 1, Terminal()) is None  # small
    terminal = Terminal()
    progress = SeedProgress.for_terminal(25_000, terminal)
    assert progress is not None
    for rows in (10_000, 10_000, 5_000):
        progress(rows)
    assert terminal.getvalue().split("\r")[1:] == [
        "seeding: 10,000/25,000 rows",
        "seeding: 20,000/25,000 rows",
        "seeding: 25,000/25,000 rows\n",
    ]
