/* eslint-disable */
import * as types from './graphql';



/**
 * Map of all GraphQL operations in the project.
 *
 * This map has several performance disadvantages:
 * 1. It is not tree-shakeable, so it will include all operations in the project.
 * 2. It is not minifiable, so the string of a GraphQL query will be multiple times inside the bundle.
 * 3. It does not support dead code elimination, so it will add unused operations.
 *
 * Therefore it is highly recommended to use the babel or swc plugin for production.
 * Learn more about it here: https://the-guild.dev/graphql/codegen/plugins/presets/preset-client#reducing-bundle-size
 */
type Documents = {
    "mutation RegenerateAccessCode($input: RegenerateAccessCodeInput!) {\n  regenerateAccessCode(input: $input) {\n    __typename\n    ... on BootstrapCredentials {\n      accessId\n      otp\n      id\n      expiresAt\n    }\n    ... on Error {\n      code\n      message\n    }\n    ... on InvalidInputError {\n      field\n    }\n    ... on RateLimitedError {\n      retryAfterSeconds\n    }\n    ... on UnrecognizedUpstreamError {\n      upstreamStatus\n      upstreamCode\n    }\n  }\n}": typeof types.RegenerateAccessCodeDocument,
};
const documents: Documents = {
    "mutation RegenerateAccessCode($input: RegenerateAccessCodeInput!) {\n  regenerateAccessCode(input: $input) {\n    __typename\n    ... on BootstrapCredentials {\n      accessId\n      otp\n      id\n      expiresAt\n    }\n    ... on Error {\n      code\n      message\n    }\n    ... on InvalidInputError {\n      field\n    }\n    ... on RateLimitedError {\n      retryAfterSeconds\n    }\n    ... on UnrecognizedUpstreamError {\n      upstreamStatus\n      upstreamCode\n    }\n  }\n}": types.RegenerateAccessCodeDocument,
};

/**
 * The graphql function is used to parse GraphQL queries into a document that can be used by GraphQL clients.
 */
export function graphql(source: "mutation RegenerateAccessCode($input: RegenerateAccessCodeInput!) {\n  regenerateAccessCode(input: $input) {\n    __typename\n    ... on BootstrapCredentials {\n      accessId\n      otp\n      id\n      expiresAt\n    }\n    ... on Error {\n      code\n      message\n    }\n    ... on InvalidInputError {\n      field\n    }\n    ... on RateLimitedError {\n      retryAfterSeconds\n    }\n    ... on UnrecognizedUpstreamError {\n      upstreamStatus\n      upstreamCode\n    }\n  }\n}"): typeof import('./graphql').RegenerateAccessCodeDocument;


export function graphql(source: string) {
  return (documents as any)[source] ?? {};
}
