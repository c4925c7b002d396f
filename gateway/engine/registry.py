"""Registry files: the studies, subjects and devices the local engine knows, checked whole.

`parse_registry` turns the JSON of a registry file into a `Registry` or raises `RegistryError`
naming the entry and the field. References that the file itself does not satisfy (a subject's
study mode, a device's dispensed-to subject) are checked by the store against what it already
holds, in the same transaction that writes the file, so a refused file writes nothing.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gateway.domain import InvalidInput, StudyMode, parse_guid, parse_mode, parse_token

T = TypeVar("T")


class ConnectionType(enum.Enum):
    """How a device reaches mHealth (study design: "define the kits for devices")."""

    DEVICE_TO_CLOUD = "DEVICE_TO_CLOUD"
    CLOUD_TO_CLOUD = "CLOUD_TO_CLOUD"
    NO_CONNECTION = "NO_CONNECTION"


class RegistryError(ValueError):
    """A registry file breaks a rule; the message names the entry and the field."""


@dataclass(frozen=True)
class Study:
    id: str
    modes: frozenset[StudyMode]
    mhealth_settings: frozenset[StudyMode]


@dataclass(frozen=True)
class Subject:
    id: str
    study_id: str
    mode: StudyMode
    m_subject_id: str


@dataclass(frozen=True)
class Device:
    inventory_id: str
    study_id: str
    mode: StudyMode
    instance_id: str
    connection_type: ConnectionType | None
    vendor_code: str | None
    registered: bool
    dispensed_to: str | None


@dataclass(frozen=True)
class Registry:
    studies: Sequence[Study]
    subjects: Sequence[Subject]
    devices: Sequence[Device]

    def study_modes(self) -> set[tuple[str, StudyMode]]:
        return {(study.id, mode) for study in self.studies for mode in study.modes}

    def subject_keys(self) -> set[tuple[str, StudyMode, str]]:
        return {(subject.study_id, subject.mode, subject.id) for subject in self.subjects}


class _Entry:
    """One JSON object of the file, read field by field with errors that say where."""

    def __init__(self, where: str, raw: object, fields: set[str]) -> None:
        if not isinstance(raw, dict):
            raise RegistryError(f"{where}: must be an object")
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise RegistryError(f"{where}: unknown field {unknown[0]!r}")
        self.where = where
        self.raw: Mapping[str, object] = raw

    def error(self, name: str, message: str) -> RegistryError:
        return RegistryError(f"{self.where}.{name}: {message}")

    def get(self, name: str, kind: type[T], *, optional: bool = False) -> T | None:
        if name not in self.raw:
            if optional:
                return None
            raise self.error(name, "is required")
        value = self.raw[name]
        if value is None and optional:
            return None
        # bool is an int in Python; JSON keeps them apart, and so do we.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.error(name, f"must be {_KIND_NAMES[kind]}{' or null' if optional else ''}")
        return value

    def text(self, name: str, parse: Callable[[str, str], str], *, optional: bool = False) -> str | None:
        value = self.get(name, str, optional=optional)
        if value is None:
            return None
        try:
            return parse(value, name)
        except InvalidInput as error:
            raise self.error(name, error.message.removeprefix(f"{name}: ")) from None

    def required_text(self, name: str, parse: Callable[[str, str], str]) -> str:
        value = self.text(name, parse)
        assert value is not None
        return value

    def mode(self, name: str, raw: object) -> StudyMode:
        if not isinstance(raw, str):
            raise self.error(name, "must hold mode names: active, test, training")
        try:
            return parse_mode(raw, name)
        except InvalidInput as error:
            raise self.error(name, error.message.removeprefix(f"{name}: ")) from None

    def modes(self, name: str) -> frozenset[StudyMode]:
        values = self.get(name, list)
        assert values is not None
        modes = [self.mode(name, value) for value in values]
        if len(set(modes)) != len(modes):
            raise self.error(name, "lists a mode twice")
        return frozenset(modes)


_KIND_NAMES: dict[type, str] = {str: "a string", bool: "true or false", list: "a list"}


def _vendor_code(value: str, name: str) -> str:
    if not value.strip() or len(value) > 64 or not value.isprintable():
        raise InvalidInput(name, "must be 1 to 64 printable characters")
    return value


def _study(index: int, raw: object) -> Study:
    entry = _Entry(f"studies[{index}]", raw, {"id", "modes", "mhealthSettings"})
    study_id = entry.required_text("id", parse_guid)
    entry.where = f"studies[{index}] (id {study_id})"
    modes = entry.modes("modes")
    if not modes:
        raise entry.error("modes", "must list at least one mode")
    settings = entry.modes("mhealthSettings") if "mhealthSettings" in entry.raw else frozenset()
    if not settings <= modes:
        raise entry.error("mhealthSettings", "may only list modes the study has")
    return Study(study_id, modes, settings)


def _subject(index: int, raw: object) -> Subject:
    entry = _Entry(f"subjects[{index}]", raw, {"id", "studyId", "mode", "mSubjectId"})
    subject_id = entry.required_text("id", parse_guid)
    entry.where = f"subjects[{index}] (id {subject_id})"
    return Subject(
        id=subject_id,
        study_id=entry.required_text("studyId", parse_guid),
        mode=entry.mode("mode", entry.get("mode", str)),
        m_subject_id=entry.required_text("mSubjectId", parse_token),
    )


_DEVICE_FIELDS = {
    "inventoryId",
    "studyId",
    "mode",
    "instanceId",
    "connectionType",
    "vendorCode",
    "registered",
    "dispensedTo",
}


def _device(index: int, raw: object) -> Device:
    entry = _Entry(f"devices[{index}]", raw, _DEVICE_FIELDS)
    inventory_id = entry.required_text("inventoryId", parse_token)
    entry.where = f"devices[{index}] (inventoryId {inventory_id})"
    connection = entry.get("connectionType", str, optional=True)
    try:
        connection_type = None if connection is None else ConnectionType(connection)
    except ValueError:
        choices = ", ".join(member.value for member in ConnectionType)
        raise entry.error("connectionType", f"must be one of {choices} or null") from None
    registered = entry.get("registered", bool)
    assert registered is not None
    return Device(
        inventory_id=inventory_id,
        study_id=entry.required_text("studyId", parse_guid),
        mode=entry.mode("mode", entry.get("mode", str)),
        instance_id=entry.required_text("instanceId", parse_guid),
        connection_type=connection_type,
        vendor_code=entry.text("vendorCode", _vendor_code, optional=True),
        registered=registered,
        dispensed_to=entry.text("dispensedTo", parse_guid, optional=True),
    )


def _section(data: Mapping[str, object], name: str) -> list[object]:
    value = data.get(name, [])
    if not isinstance(value, list):
        raise RegistryError(f"{name}: must be a list")
    return value


def _unique(kind: str, keys: Sequence[tuple[object, ...]], label: Callable[[int], str]) -> None:
    seen: dict[tuple[object, ...], int] = {}
    for index, key in enumerate(keys):
        if key in seen:
            raise RegistryError(f"{label(index)}: repeats {kind} {label(seen[key])}")
        seen[key] = index


def parse_registry(data: object) -> Registry:
    """Check a registry document as a whole; raise `RegistryError` at the first broken rule."""
    if not isinstance(data, dict):
        raise RegistryError("the registry must be a JSON object with studies, subjects and devices")
    unknown = sorted(set(data) - {"studies", "subjects", "devices"})
    if unknown:
        raise RegistryError(f"unknown section {unknown[0]!r}: expected studies, subjects, devices")
    studies = [_study(i, raw) for i, raw in enumerate(_section(data, "studies"))]
    subjects = [_subject(i, raw) for i, raw in enumerate(_section(data, "subjects"))]
    devices = [_device(i, raw) for i, raw in enumerate(_section(data, "devices"))]
    _unique("study", [(s.id,) for s in studies], lambda i: f"studies[{i}]")
    _unique("subject", [(s.study_id, s.mode, s.id) for s in subjects], lambda i: f"subjects[{i}]")
    _unique("m-subject", [(s.study_id, s.mode, s.m_subject_id) for s in subjects], lambda i: f"subjects[{i}]")
    _unique("device", [(d.study_id, d.mode, d.inventory_id) for d in devices], lambda i: f"devices[{i}]")
    return Registry(studies, subjects, devices)


def load_registry(path: Path) -> Registry:
    """Read and check a registry file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RegistryError(f"{path}: cannot be read ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegistryError(f"{path}: not valid JSON ({error})") from None
    return parse_registry(data)


DEMO_REGISTRY = Path(__file__).with_name("demo_registry.json")
