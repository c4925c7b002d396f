"""The GraphQL schema: `Query.gateway` and `Mutation.regenerateAccessCode`.

Resolvers are thin: hand the input to the regeneration service, render the outcome.
Expected failures are union members; anything else is masked and logged with the request id.
`GatewaySchema` executes each request on a document parsed and validated once per distinct text
(`gateway.api.documents`), with no per-request extension.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, NoReturn

import strawberry
from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    NoSchemaIntrospectionCustomRule,
    get_operation_ast,
    specified_rules,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import execute as graphql_execute
from graphql.pyutils import AwaitableOrValue
from strawberry.exceptions import MissingQueryError
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.schema.validation_rules.maybe_null import MaybeNullValidationRule
from strawberry.schema.validation_rules.one_of import OneOfInputValidationRule
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from gateway import __version__, logs
from gateway.api.context import Context, Info
from gateway.api.documents import DocumentCache
from gateway.api.guards import DocumentLimits, GuardWork, document_guards, without_suggestions
from gateway.api.plans import Plan, PlannedResolvers, plan, top_level_fields
from gateway.api.types import (
    BackendKind,
    BootstrapCredentials,
    GatewayInfo,
    RegenerateAccessCodeInput,
    RegenerateAccessCodeResult,
    render_refusal,
)
from gateway.domain import Refusal
from gateway.metrics import observe_request
from gateway.settings import GraphQLSettings

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = logging.getLogger(__name__)


@strawberry.type(description="Read-only facts about the gateway.")
class Query:
    @strawberry.field(description="The gateway's version and which backend serves it.")
    def gateway(self, info: Info) -> GatewayInfo:
        settings = info.context.settings
        backend = info.context.service.backend
        local = backend.name == "local"
        return GatewayInfo(
            version=__version__,
            backend=BackendKind(backend.name),
            otp_lifetime_seconds=settings.otp_ttl_seconds if local else None,
        )


async def regenerate_access_code(context: Context, input: RegenerateAccessCodeInput) -> RegenerateAccessCodeResult:
    """`Mutation.regenerateAccessCode`: the service's answer as a union member (the resolver and the
    operation's plan both call this)."""
    started = time.perf_counter()
    try:
        credentials = await context.service.regenerate(input.to_request(), context.caller)
    except Refusal as refusal:
        error = render_refusal(refusal)
        logs.note_outcome(error)
        observe_request("graphql", _typename(error), time.perf_counter() - started)
        return error  # type: ignore[return-value]
    observe_request("graphql", "BootstrapCredentials", time.perf_counter() - started)
    answer = BootstrapCredentials.from_domain(credentials)
    logs.note_outcome(answer)
    return answer


@strawberry.type(description="Operations that change state.")
class Mutation:
    @strawberry.mutation(
        description=(
            "Recreate the access ID and one-time password of a subject's bootstrap device. "
            "The device's previous pair stops working at once. Not idempotent: each call issues new credentials."
        )
    )
    async def regenerate_access_code(self, info: Info, input: RegenerateAccessCodeInput) -> RegenerateAccessCodeResult:
        return await regenerate_access_code(info.context, input)


PLANNED: PlannedResolvers = {("Mutation", "regenerateAccessCode"): regenerate_access_code}
"""The root fields an operation's plan may call (`gateway.api.plans`): the hot one."""


def _typename(member: object) -> str:
    """A union member's `__typename` (its GraphQL name, which may differ from the class's)."""
    definition = getattr(type(member), "__strawberry_definition__", None)
    return definition.name if definition is not None else type(member).__name__


MASKED_MESSAGE = "Unexpected error. Quote the X-Request-ID response header when reporting it."


def _is_unexpected(error: GraphQLError) -> bool:
    """Errors raised by our code are masked; GraphQL's own (syntax, validation, variables) are not."""
    return error.original_error is not None and not isinstance(error.original_error, GraphQLError)


def _masked(error: GraphQLError) -> GraphQLError:
    """The error as the client sees it: the same place and path, none of the exception's text."""
    return GraphQLError(
        MASKED_MESSAGE,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
    )


def _log_errors(errors: Iterable[GraphQLError], context: object) -> None:
    request_id = context.caller.request_id if isinstance(context, Context) else "-"
    for error in errors:
        if _is_unexpected(error):
            log.error("unexpected error in a GraphQL resolver (request %s)", request_id, exc_info=error.original_error)
        else:
            log.debug("GraphQL request error (request %s): %s", request_id, error.message)


class GatewaySchema(strawberry.Schema):
    """Strawberry's schema, executed without per-request extensions.

    `execute` takes the document from the cache (`gateway.api.documents`: parsed and validated
    once per distinct text, the guards included), checks the operation type like Strawberry does
    (the view turns that into 400), runs graphql-core's `execute` (suggestions hidden), logs
    unexpected errors with the request id and masks them. Streaming and subscriptions are not
    served (no route or transport reaches them) and refuse to run unguarded.
    """

    def __init__(
        self,
        *,
        query: type,
        mutation: type,
        settings: GraphQLSettings,
        production: bool,
        tracing: Tracing | None = None,
    ) -> None:
        super().__init__(query=query, mutation=mutation)
        self.tracing = tracing
        """With `GATEWAY_OTEL=true`, a span per operation: its type, root fields and outcome, never the document."""
        self.guard_work = GuardWork()
        """What the document guards did, for tests and profiling."""
        limits = DocumentLimits(
            max_depth=settings.max_depth,
            max_aliases=settings.max_aliases,
            max_selections=settings.max_selections,
        )
        rules: list[type[ASTValidationRule]] = [*specified_rules, MaybeNullValidationRule, OneOfInputValidationRule]
        if production:
            rules.append(NoSchemaIntrospectionCustomRule)
        self.documents = DocumentCache(
            self._schema,
            guards=document_guards(limits, self.guard_work),
            rules=rules,
            max_tokens=settings.max_tokens,
            size=settings.document_cache_size,
            planner=lambda document, name: plan(self, document, name, PLANNED),
        )

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        _log_errors(errors, execution_context.context if execution_context else None)

    def _document(
        self,
        query: str | None,
        operation_name: str | None,
        allowed_operation_types: Iterable[OperationType] | None,
        context: object,
    ) -> DocumentNode | ExecutionResult:
        """The valid document to execute, or the result that refuses it."""
        if not query:
            raise MissingQueryError
        try:
            prepared = self.documents.get(query)
        except Exception as error:  # a bug in parsing or a rule: masked and logged like a resolver's
            return self._refusal([GraphQLError(str(error), original_error=error)], context)
        if prepared.document is None:
            return self._refusal(list(prepared.errors), context)
        operation_type = prepared.operation_type(operation_name)
        allowed = DEFAULT_ALLOWED_OPERATION_TYPES if allowed_operation_types is None else allowed_operation_types
        if operation_type not in allowed:
            raise InvalidOperationTypeError(operation_type)
        if prepared.errors:
            return self._refusal(list(prepared.errors), context)
        if self.tracing is not None:
            operation = get_operation_ast(prepared.document, operation_name)
            fields = top_level_fields(operation) if operation is not None else []
            self.tracing.describe_operation(operation_type.value, fields)
        return prepared.document

    def _refusal(self, errors: list[GraphQLError], context: object) -> ExecutionResult:
        _log_errors(errors, context)
        return PreExecutionError(data=None, errors=[_masked(e) if _is_unexpected(e) else e for e in errors])

    def _unexpected(self, error: Exception, context: object) -> ExecutionResult:
        return self._refusal([GraphQLError(str(error), original_error=error)], context)

    def _run(
        self,
        document: DocumentNode,
        *,
        variable_values: dict[str, Any] | None,
        context_value: Any,
        root_value: Any,
        operation_name: str | None,
        operation_extensions: dict[str, Any] | None,
    ) -> AwaitableOrValue[GraphQLExecutionResult]:
        return graphql_execute(
            self._schema,
            document,
            root_value=root_value,
            context_value=context_value,
            variable_values=variable_values,
            operation_name=operation_name,
            executor_class=self.execution_context_class,
            is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # Strawberry's, as it passes it
            hide_suggestions=True,
            operation_extensions=operation_extensions,
        )

    def _finish(self, result: GraphQLExecutionResult, context: object) -> ExecutionResult:
        if not result.errors:
            return ExecutionResult(data=result.data, errors=None)
        if result.data is None and all(error.path is None for error in result.errors):
            # Nothing executed (variables that do not fit the operation, an unknown operation
            # name): a request error, which GraphQL over HTTP answers with 400.
            for error in result.errors:
                error.message = without_suggestions(error.message)
            return self._refusal(list(result.errors), context)
        _log_errors(result.errors, context)
        errors = []
        for error in result.errors:
            if _is_unexpected(error):
                errors.append(_masked(error))
            else:
                error.message = without_suggestions(error.message)
                errors.append(error)
        return ExecutionResult(data=result.data, errors=errors)

    def _start(  # noqa: PLR0917 (Strawberry's signature of execute and execute_sync)
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> tuple[Any, ExecutionResult | AwaitableOrValue[GraphQLExecutionResult]]:
        """The cached document's execution begun: (the context, graphql-core's result or awaitable),
        or (the context, Strawberry's result: the refusal) when the document is refused."""
        document = self._document(query, operation_name, allowed_operation_types, context_value)
        if isinstance(document, ExecutionResult):
            return context_value, document
        try:
            outcome = self._run(
                document,
                variable_values=variable_values,
                context_value=context_value,
                root_value=root_value,
                operation_name=operation_name,
                operation_extensions=operation_extensions,
            )
        except Exception as error:  # graphql-core reports resolvers' errors itself; this is anything else
            return context_value, self._unexpected(error, context_value)
        return context_value, outcome

    async def execute(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        """Strawberry's `execute` (same arguments), on the cached document; in a span with tracing on."""
        if self.tracing is None:
            return await self._execute(*args, **kwargs)
        with self.tracing.operation():
            return self._noted(self.tracing, await self._execute(*args, **kwargs))

    @staticmethod
    def _noted(tracing: Tracing, result: ExecutionResult) -> ExecutionResult:
        """`result`, its outcome noted on the operation's span (the union member's `__typename`)."""
        entry = logs.current.get()
        if entry is not None and entry.outcome is not None:
            tracing.note("gateway.outcome", entry.outcome)
        if result.errors:
            tracing.note("gateway.graphql.errors", len(result.errors))
        return result

    async def _execute(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        context_value, outcome = self._start(*args, **kwargs)
        if isinstance(outcome, ExecutionResult):
            return outcome
        try:
            result = await outcome if isawaitable(outcome) else outcome
        except Exception as error:  # graphql-core reports resolvers' errors itself; this is anything else
            return self._unexpected(error, context_value)
        return self._finish(result, context_value)

    def execute_sync(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        """The same path for resolvers that need no awaiting (Strawberry's `introspect` uses it)."""
        context_value, outcome = self._start(*args, **kwargs)
        if isinstance(outcome, ExecutionResult):
            return outcome
        if isawaitable(outcome):
            close = getattr(outcome, "close", None)
            if close is not None:
                close()
            return self._unexpected(RuntimeError("GraphQL execution failed to complete synchronously."), context_value)
        return self._finish(outcome, context_value)

    def plan(self, query: str, operation_name: str | None) -> Plan | None:
        """The plan of a cached document's operation (`gateway.api.plans`); None when it has none,
        or when the document is not in the cache (`execute` prepares it, and caches it when it may)."""
        return self.documents.plan_of(query, operation_name)

    async def run_plan(self, plan: Plan, variables: dict[str, Any] | None, context: Context) -> ExecutionResult | None:
        """The operation run by its plan, finished as `execute` finishes the executor's result (errors
        logged and masked, in a span with tracing on); None when the variables do not fit (the
        executor's path reports that)."""
        coerced = plan.coerce(self._schema, variables)
        if coerced is None:
            return None
        self.documents.answered_by_plan()
        if self.tracing is None:
            return self._finish(await plan.run(context, coerced), context)
        with self.tracing.operation():
            self.tracing.describe_operation(plan.operation_type, plan.root_fields)
            return self._noted(self.tracing, self._finish(await plan.run(context, coerced), context))

    async def subscribe(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("the gateway has no subscriptions")

    async def stream(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("the gateway serves GraphQL over plain HTTP only: use execute")


def build_schema(
    settings: GraphQLSettings | None = None, *, production: bool = False, tracing: Tracing | None = None
) -> GatewaySchema:
    """The schema with the settings' limits (depth, aliases counted through fragments, fan-out,
    tokens), its document cache, suggestions hidden and introspection off in production, and a span
    per operation with `tracing`. The SDL never depends on them."""
    return GatewaySchema(
        query=Query, mutation=Mutation, settings=settings or GraphQLSettings(), production=production, tracing=tracing
    )


schema = build_schema()
"""The schema with default settings: what `gateway export-schema` writes."""
