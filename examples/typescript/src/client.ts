// A small client of the gateway: one typed call, and one exhaustive switch on the result's
// __typename. A union member added to the schema (and regenerated) makes the `never` check fail
// `tsc`, so a front end cannot forget to handle it.
import {
  RegenerateAccessCodeDocument,
  type RegenerateAccessCodeMutation,
  type RegenerateAccessCodeInput,
} from "./gql/graphql";

export type RegenerateResult = RegenerateAccessCodeMutation["regenerateAccessCode"];

/** Send the mutation; the bearer token comes from your identity provider (or `gateway token`). */
export async function regenerateAccessCode(
  endpoint: string,
  token: string,
  input: RegenerateAccessCodeInput,
): Promise<RegenerateResult> {
  const response = await fetch(endpoint, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: RegenerateAccessCodeDocument.toString(), variables: { input } }),
  });
  if (!response.ok) {
    // 401 (no or bad token), 413, 503 while the token's keys cannot be fetched: not a union member.
    throw new Error(`gateway answered HTTP ${response.status}`);
  }
  const body = (await response.json()) as {
    data?: RegenerateAccessCodeMutation | null;
    errors?: { message: string }[];
  };
  if (!body.data) {
    // An unexpected failure: quote the X-Request-ID response header when reporting it.
    const request = response.headers.get("x-request-id") ?? "unknown";
    throw new Error(`${body.errors?.[0]?.message ?? "no data"} (request ${request})`);
  }
  return body.data.regenerateAccessCode;
}

/** What a site user's screen shows for each outcome. Never log `result.otp`. */
export function describe(result: RegenerateResult): string {
  switch (result.__typename) {
    case "BootstrapCredentials":
      return `Access ID ${result.accessId}, one-time password shown once` +
        (result.expiresAt ? `, valid until ${new Date(result.expiresAt).toLocaleString()}` : "");
    case "InvalidInputError":
      return `Check ${result.field}: ${result.message}`;
    case "RateLimitedError":
      return `Too many tries: wait ${result.retryAfterSeconds} s`;
    case "UnrecognizedUpstreamError":
      return `Clinical One answered ${result.upstreamStatus} ${result.upstreamCode ?? ""}: ${result.message}`;
    case "InvalidSubjectError":
    case "DeviceNotDispensedError":
    case "DeviceDispensedToAnotherSubjectError":
    case "InvalidDeviceError":
    case "DeviceNotRegisteredError":
    case "MissingConnectionTypeError":
    case "MissingVendorCodeError":
    case "NoConnectionDeviceError":
    case "StudyNotFoundError":
    case "MHealthSettingsNotFoundError":
    case "PermissionDeniedError":
      return result.message; // the documented prose; result.code to branch on
    case "InternalServerError":
    case "UpstreamUnavailableError":
      return `${result.message}: try again later`;
    default: {
      // Every member is handled above: `result` is `never` here, or tsc fails.
      const unhandled: never = result;
      throw new Error(`unhandled result ${JSON.stringify(unhandled)}`);
    }
  }
}
