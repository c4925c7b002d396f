"""GraphQL documents parsed and validated once per distinct text, kept in a bounded LRU cache.

A request's document is looked up by its text. On a miss it is parsed (the parser enforces the
token limit) and validated in two steps: first the gateway's guards alone
(`gateway.api.guards.document_guards`: depth, aliases, fan-out, linear in the document; a rule that
needs no visit of the document), then, if they pass, graphql-core's rules (and introspection's
refusal in production). A document over a limit is thus refused before the costlier rules look
at it. The verdict, the document or its
errors, is what the cache keeps: a cached document passes every guard again without any work, and
a cached invalid one is refused with the same errors each time.

The cache holds at most `GATEWAY_GRAPHQL_DOCUMENT_CACHE_SIZE` documents (the least recently used
is dropped first), each at most `CACHEABLE_TOKENS` tokens and `CACHEABLE_CHARACTERS` characters
long: memory stays bounded whatever callers send. Longer documents are prepared on every request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    parse,
    validate,
)
from graphql.validation import ASTValidationContext
from strawberry.schema.exceptions import CannotGetOperationTypeError
from strawberry.types.graphql import OperationType

from gateway.api.guards import without_suggestions
from gateway.api.plans import Plan

Planner = Callable[[DocumentNode, str | None], Plan | None]


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A document's text after parsing and validation: shared by every request that sends it,
    so never changed after it is made."""

    document: DocumentNode | None
    """None when the text did not parse."""
    errors: tuple[GraphQLError, ...]
    """The parse error, or the validation errors (suggestions removed); empty when valid."""
    operations: Mapping[str | None, OperationType]
    """Each named operation's type; `None` maps to the first operation's."""
    plans: dict[str | None, Plan | None] = field(default_factory=dict, compare=False)
    """Each operation's plan once asked for (None: it has none), by the name the request gave."""

    def operation_type(self, operation_name: str | None) -> OperationType:
        """What Strawberry's `get_operation_type` says, from the cached table."""
        found = self.operations.get(operation_name)
        if found is None:
            raise CannotGetOperationTypeError(operation_name)
        return found


def _operations(document: DocumentNode) -> dict[str | None, OperationType]:
    table: dict[str | None, OperationType] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            kind = OperationType(definition.operation.value)
            table.setdefault(None, kind)
            if definition.name is not None:
                table.setdefault(definition.name.value, kind)
    return table


CACHEABLE_TOKENS = 256
"""Longer documents are prepared each time they come, never kept: a parsed document costs about
half a KiB per token, and the gateway's own documents (the mutation, GraphiQL's introspection
query) are well under this."""
CACHEABLE_CHARACTERS = 4096
"""Nor are longer texts (a long comment is one token)."""


@dataclass(frozen=True)
class CacheInfo:
    hits: int
    misses: int
    planned: int
    """Hits answered by the document's plan (`gateway.api.plans`) rather than the executor."""
    documents: int
    """Documents held now, at most `bound`."""
    bound: int


class DocumentCache:
    """`get(text)`: the prepared document, from the cache or made now (and kept when small enough)."""

    def __init__(
        self,
        schema: GraphQLSchema,
        *,
        guards: type[ASTValidationRule],
        rules: Collection[type[ASTValidationRule]],
        max_tokens: int,
        size: int,
        planner: Planner | None = None,
    ) -> None:
        self.schema = schema
        self.planner = planner
        self.guards = guards
        self.rules = tuple(rules)
        self.max_tokens = max_tokens
        self.size = size
        self.hits = self.misses = self.planned = 0
        self._documents: OrderedDict[str, PreparedDocument] = OrderedDict()

    def get(self, text: str) -> PreparedDocument:
        prepared = self._documents.get(text)
        if prepared is not None:
            self._documents.move_to_end(text)
            self.hits += 1
            return prepared
        self.misses += 1
        prepared = self.prepare(text)
        tokens: int = getattr(prepared.document, "token_count", 0)  # graphql-core counts them while parsing
        if self.size and len(text) <= CACHEABLE_CHARACTERS and tokens <= CACHEABLE_TOKENS:
            self._documents[text] = prepared
            if len(self._documents) > self.size:
                self._documents.popitem(last=False)
        return prepared

    def prepare(self, text: str) -> PreparedDocument:
        """Parse and validate `text`, uncached."""
        try:
            document = parse(text, max_tokens=self.max_tokens)
        except GraphQLError as error:
            return PreparedDocument(None, (error,), {})
        errors: list[GraphQLError] = []
        self.guards(ASTValidationContext(document, errors.append))  # first and alone: no visit of the document
        if not errors:
            errors = validate(self.schema, document, self.rules, hide_suggestions=True)
        for found in errors:  # graphql-core hides them; this catches any message it does not cover
            found.message = without_suggestions(found.message)
        return PreparedDocument(document, tuple(errors), _operations(document))

    def plan_of(self, text: str, operation_name: str | None) -> Plan | None:
        """The plan of a cached document's operation (`gateway.api.plans`); None when the document
        is not cached, is refused or has no plan (`get` is asked next). Counts nothing: a plan that
        answers is counted by `answered_by_plan`."""
        prepared = self._documents.get(text)
        if prepared is None:
            return None
        found = self._plan(prepared, operation_name)
        if found is not None:
            self._documents.move_to_end(text)
        return found

    def answered_by_plan(self) -> None:
        """Count a request answered by a cached document's plan: a hit."""
        self.hits += 1
        self.planned += 1

    def _plan(self, prepared: PreparedDocument, operation_name: str | None) -> Plan | None:
        if self.planner is None or prepared.document is None or prepared.errors:
            return None
        if operation_name not in prepared.operations:  # an unknown name is the executor's error to report
            return None
        try:
            return prepared.plans[operation_name]
        except KeyError:
            made = prepared.plans[operation_name] = self.planner(prepared.document, operation_name)
            return made

    def __contains__(self, text: object) -> bool:
        return text in self._documents

    def info(self) -> CacheInfo:
        return CacheInfo(
            hits=self.hits, misses=self.misses, planned=self.planned, documents=len(self._documents), bound=self.size
        )

    def clear(self) -> None:
        self._documents.clear()
