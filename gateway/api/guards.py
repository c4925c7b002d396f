"""Guards on GraphQL documents, and the trusted documents.

- `document_guards`: the GraphQL document limits (depth, aliases, fan-out) as one graphql-core
  validation rule, in time linear in the document: each fragment is measured once, however often
  it is spread. The token limit is the parser's (`max_tokens`); suggestions ("Did you mean …?")
  are hidden by graphql-core's `hide_suggestions` and `without_suggestions`, so a client without
  introspection cannot map the schema by probing.
- `TrustedDocuments`: the file `GATEWAY_TRUSTED_DOCUMENTS` names, read and checked; when it is set,
  only its documents run, sent whole or by hash (`gateway.api.persisted` decides which runs).

Parsing, validation (these guards included) and their cache are in `gateway.api.documents`;
execution and error masking in `gateway.api.schema`; the HTTP rules (JSON-only POST, no mutations
by GET, no batching) in `gateway.api.view`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    ExecutableDefinitionNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.validation import ASTValidationContext, ASTValidationRule

from gateway.settings import SettingsError

# ---------------------------------------------------------------------------------------------
# Document guards: depth, aliases and fan-out, each fragment measured once.

COUNT_CAP = 1_000_000_000
"""Counts through fragment spreads multiply; they are kept from growing past this (a document
that reaches it is over every limit anyway) and shown as "at least" that."""


@dataclass
class GuardWork:
    """What the guards did, summed over every document they measured (for tests and profiling):
    the work is linear in the document, so these grow with its size, never with its fan-out."""

    documents: int = 0
    fragments_measured: int = 0
    selections_visited: int = 0


@dataclass(frozen=True)
class DocumentLimits:
    max_depth: int
    max_aliases: int
    max_selections: int


@dataclass(frozen=True, slots=True)
class _Shape:
    """One definition's own selections, its fragment spreads not followed yet."""

    depth: int
    """Deepest level of a selection, the top level being 0; introspection fields' subtrees not counted."""
    aliases: int
    selections: int
    """Fields, each counted once where it stands."""
    spreads: tuple[tuple[str, int | None], ...]
    """(fragment name, level of the spread); level None below an introspection field."""


@dataclass(frozen=True, slots=True)
class _Totals:
    """A definition's measures with every spread replaced by its fragment."""

    depth: int
    aliases: int
    selections: int


_NOTHING = _Totals(0, 0, 0)


def _shape(definition: ExecutableDefinitionNode, work: GuardWork) -> _Shape:
    """Walk the definition's own selections once (iteratively: no recursion limit to hit)."""
    depth = aliases = selections = 0
    spreads: list[tuple[str, int | None]] = []
    pending: list[tuple[SelectionSetNode, int | None]] = [(definition.selection_set, 0)]
    while pending:
        selection_set, level = pending.pop()
        for selection in selection_set.selections:
            work.selections_visited += 1
            if level is not None and level > depth:
                depth = level
            if isinstance(selection, FieldNode):
                selections += 1
                if selection.alias is not None:
                    aliases += 1
                if selection.selection_set is not None:
                    # Like Strawberry's depth limiter: introspection fields (`__schema`, `__type`)
                    # do not add depth; graphql-core limits their nesting itself.
                    counted = level is not None and not selection.name.value.startswith("__")
                    pending.append((selection.selection_set, level + 1 if counted and level is not None else None))
            elif isinstance(selection, InlineFragmentNode):
                pending.append((selection.selection_set, level))
            elif isinstance(selection, FragmentSpreadNode):
                spreads.append((selection.name.value, level))
    return _Shape(depth, aliases, selections, tuple(spreads))


def _combine(shape: _Shape, totals: Mapping[str, _Totals]) -> _Totals:
    """A definition's totals from its shape and its fragments' totals. A fragment not in `totals`
    (unknown, or on a cycle: graphql-core's rules report both) counts as nothing."""
    depth, aliases, selections = shape.depth, shape.aliases, shape.selections
    for name, level in shape.spreads:
        fragment = totals.get(name, _NOTHING)
        if level is not None and level + fragment.depth > depth:
            depth = level + fragment.depth
        aliases = min(aliases + fragment.aliases, COUNT_CAP)
        selections = min(selections + fragment.selections, COUNT_CAP)
    return _Totals(depth, aliases, selections)


def _fragment_totals(document: DocumentNode, work: GuardWork) -> dict[str, _Totals]:
    """Every fragment's totals, each fragment walked once: a depth-first walk of the spread graph
    (iterative) that finishes a fragment after the fragments it spreads."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    shapes: dict[str, _Shape] = {}
    totals: dict[str, _Totals] = {}
    open_: set[str] = set()
    for root in fragments:
        stack = [root]
        while stack:
            name = stack[-1]
            if name in totals:
                stack.pop()
                continue
            if name not in open_:
                open_.add(name)
                work.fragments_measured += 1
                shape = shapes[name] = _shape(fragments[name], work)
                after = [s for s, _ in shape.spreads if s in fragments and s not in totals and s not in open_]
                if after:
                    stack.extend(after)
                    continue
            totals[name] = _combine(shapes[name], totals)
            open_.discard(name)
            stack.pop()
    return totals


def _shown(count: int) -> str:
    return f"at least {COUNT_CAP}" if count >= COUNT_CAP else str(count)


def document_errors(document: DocumentNode, limits: DocumentLimits, work: GuardWork) -> list[GraphQLError]:
    """The guards' verdict on a parsed document, in time linear in its size.

    - depth: per operation, the deepest selection, fragments followed (introspection fields'
      selections not counted), at most `max_depth`;
    - aliases: in all operations, each fragment's aliases counted each time it is spread;
    - fan-out: the field selections the operations expand to when every spread is replaced by its
      fragment (`...F ...F` counts F twice), at most `max_selections`.

    Each fragment is walked once and its measures reused at every spread, so a document whose
    fragments spread each other twice (fan-out 2^n) costs n, not 2^n.
    """
    work.documents += 1
    totals = _fragment_totals(document, work)
    errors: list[GraphQLError] = []
    aliases = selections = 0
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        operation = _combine(_shape(definition, work), totals)
        if operation.depth > limits.max_depth:
            name = definition.name.value if definition.name else "anonymous"
            message = f"'{name}' exceeds maximum operation depth of {limits.max_depth}"
            errors.append(GraphQLError(message, definition))
        aliases = min(aliases + operation.aliases, COUNT_CAP)
        selections = min(selections + operation.selections, COUNT_CAP)
    if aliases > limits.max_aliases:
        errors.append(GraphQLError(f"{_shown(aliases)} aliases found. Allowed: {limits.max_aliases}"))
    if selections > limits.max_selections:
        message = f"{_shown(selections)} field selections found, fragments expanded. Allowed: {limits.max_selections}"
        errors.append(GraphQLError(message))
    return errors


def document_guards(limits: DocumentLimits, work: GuardWork) -> type[ASTValidationRule]:
    """The guards as a graphql-core validation rule: it runs with validation, so its verdict is
    cached with the document's (`gateway.api.documents`). It needs the document alone (no schema,
    no visit): its work is done when it is made."""

    class DocumentGuards(ASTValidationRule):
        def __init__(self, context: ASTValidationContext) -> None:
            super().__init__(context)
            for error in document_errors(context.document, limits, work):
                context.report_error(error)

    return DocumentGuards


_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def without_suggestions(message: str) -> str:
    return _SUGGESTION.sub("", message)


def document_hash(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TrustedDocuments:
    """The only documents the gateway executes, by the hex sha256 of their text."""

    documents: Mapping[str, str]

    @classmethod
    def load(cls, path: str | Path) -> TrustedDocuments:
        """Read `{"<sha256>": "<document>", …}` or an Apollo persisted-query manifest
        (`{"format": "apollo-persisted-query-manifest", "operations": [{"id", "body", …}]}`).
        Every hash must be the document's own; raises `SettingsError` otherwise."""
        name = "GATEWAY_TRUSTED_DOCUMENTS"
        try:
            raw: Any = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SettingsError(f"{name}: cannot read {path}: {error}") from None
        if isinstance(raw, dict) and isinstance(raw.get("operations"), list):
            pairs = [
                (op.get("id"), op.get("body")) if isinstance(op, dict) else (None, None) for op in raw["operations"]
            ]
        elif isinstance(raw, dict):
            pairs = list(raw.items())
        else:
            raise SettingsError(f"{name}: {path} must hold an object of sha256 -> document")
        documents: dict[str, str] = {}
        for key, document in pairs:
            if not isinstance(key, str) or not isinstance(document, str):
                raise SettingsError(f"{name}: {path} must map sha256 strings to document strings")
            if document_hash(document) != key.lower():
                raise SettingsError(f"{name}: {key!r} in {path} is not the sha256 of its document")
            documents[key.lower()] = document
        return cls(documents)
