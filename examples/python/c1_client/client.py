from typing import Any

from .async_base_client import AsyncBaseClient
from .input_types import RegenerateAccessCodeInput
from .regenerate_access_code import RegenerateAccessCode


def gql(q: str) -> str:
    return q


class GatewayClient(AsyncBaseClient):
    async def regenerate_access_code(
        self, input: RegenerateAccessCodeInput, **kwargs: Any
    ) -> RegenerateAccessCode:
        query = gql("""
            mutation RegenerateAccessCode($input: RegenerateAccessCodeInput!) {
              regenerateAccessCode(input: $input) {
                __typename
                ... on BootstrapCredentials {
                  accessId
                  otp
                  id
                  expiresAt
                }
                ... on Error {
                  code
                  message
                }
                ... on InvalidInputError {
                  field
                }
                ... on RateLimitedError {
                  retryAfterSeconds
                }
                ... on UnrecognizedUpstreamError {
                  upstreamStatus
                  upstreamCode
                }
              }
            }
            """)
        variables: dict[str, object] = {"input": input}
        response = await self.execute(
            query=query,
            operation_name="RegenerateAccessCode",
            variables=variables,
            **kwargs,
        )
        data = self.get_data(response)
        return RegenerateAccessCode.model_validate(data)
