"""The GraphQL schema: `Query.gateway` and `Mutation.regenerateAccessCode`.

Resolvers are thin: hand the input to the regeneration service, render the outcome.
Expected failures are union members; anything else is masked and logged with the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    SchemaExtension,
)
from strawberry.types import ExecutionContext

from gateway import __version__
from gateway.api.context import Context, Info
from gateway.api.types import (
    BackendKind,
    BootstrapCredentials,
    GatewayInfo,
    RegenerateAccessCodeInput,
    RegenerateAccessCodeResult,
    render_refusal,
)
from gateway.domain import Refusal
from gateway.hardening import HideSuggestions, QueryDepthLimit
from gateway.settings import Settings

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


@strawberry.type(description="Operations that change state.")
class Mutation:
    @strawberry.mutation(
        description=(
            "Recreate the access ID and one-time password of a subject's bootstrap device. "
            "The device's previous pair stops working at once. Not idempotent: each call issues new credentials."
        )
    )
    async def regenerate_access_code(self, info: Info, input: RegenerateAccessCodeInput) -> RegenerateAccessCodeResult:
        try:
            credentials = await info.context.service.regenerate(input.to_request(), info.context.caller)
        except Refusal as refusal:
            return render_refusal(refusal)  # type: ignore[return-value]
        return BootstrapCredentials.from_domain(credentials)


def _is_unexpected(error: GraphQLError) -> bool:
    """Errors raised by our code are masked; GraphQL's own (syntax, validation, variables) are not."""
    return error.original_error is not None and not isinstance(error.original_error, GraphQLError)


class GatewaySchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        context = execution_context.context if execution_context else None
        request_id = context.caller.request_id if isinstance(context, Context) else "-"
        for error in errors:
            if _is_unexpected(error):
                log.error(
                    "unexpected error in a GraphQL resolver (request %s)",
                    request_id,
                    exc_info=error.original_error,
                )
            else:
                log.debug("GraphQL request error (request %s): %s", request_id, error.message)


def build_schema(settings: Settings | None = None) -> GatewaySchema:
    """The schema with the settings' limits: query depth, aliases (those in fragments counted),
    tokens; suggestions hidden; introspection off in production. The SDL never depends on them."""
    limits = settings or Settings()
    extensions: list[Callable[[], SchemaExtension]] = [
        lambda: MaskErrors(
            should_mask_error=_is_unexpected,
            error_message="Unexpected error. Quote the X-Request-ID response header when reporting it.",
        ),
        lambda: QueryDepthLimit(max_depth=limits.graphql_max_depth),
        lambda: MaxAliasesLimiter(max_alias_count=limits.graphql_max_aliases),
        lambda: MaxTokensLimiter(max_token_count=limits.graphql_max_tokens),
        HideSuggestions,
    ]
    if limits.production:
        extensions.append(DisableIntrospection)
    return GatewaySchema(query=Query, mutation=Mutation, extensions=extensions)


schema = build_schema()
"""The schema with default settings: what `gateway export-schema` writes."""
