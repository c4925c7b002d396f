/* eslint-disable */
/** Internal type. DO NOT USE DIRECTLY. */
type Exact<T extends { [key: string]: unknown }> = { [K in keyof T]: T[K] };
/** Internal type. DO NOT USE DIRECTLY. */
export type Incremental<T> = T | { [P in keyof T]?: P extends ' $fragmentName' | '__typename' ? T[P] : never };
import type { DocumentTypeDecoration } from '@graphql-typed-document-node/core';
/** Machine-readable code of an error result; one value per error type. */
export type ErrorCode =
  | 'DEVICE_DISPENSED_TO_ANOTHER_SUBJECT'
  | 'DEVICE_NOT_DISPENSED'
  | 'DEVICE_NOT_REGISTERED'
  | 'INTERNAL_SERVER_ERROR'
  | 'INVALID_DEVICE'
  | 'INVALID_INPUT'
  | 'INVALID_SUBJECT'
  | 'MHEALTH_SETTINGS_NOT_FOUND'
  | 'MISSING_CONNECTION_TYPE'
  | 'MISSING_VENDOR_CODE'
  | 'NO_CONNECTION_DEVICE'
  | 'PERMISSION_DENIED'
  | 'RATE_LIMITED'
  | 'STUDY_NOT_FOUND'
  | 'UNRECOGNIZED_UPSTREAM_ERROR'
  | 'UPSTREAM_UNAVAILABLE';

/** Which device's access code to recreate. */
export type RegenerateAccessCodeInput = {
  /** The device's inventory id: 1 to 64 letters, digits, '.', '_' or '-'. */
  inventoryId: string;
  /** The subject's id in mHealth, for example MSUBJECT-001. */
  mSubjectId: string;
  /** The study mode the subject and device belong to. */
  mode: StudyMode;
  /** The study: a 32-character hexadecimal GUID (any case; dashes allowed). */
  studyId: string;
  /** The subject (patient): a 32-character hexadecimal GUID (any case; dashes allowed). */
  subjectId: string;
};

/** The mode of a study: ACTIVE is production; TEST and TRAINING hold mock data. */
export type StudyMode =
  | 'ACTIVE'
  | 'TEST'
  | 'TRAINING';

export type RegenerateAccessCodeMutationVariables = Exact<{
  input: RegenerateAccessCodeInput;
}>;


export type RegenerateAccessCodeMutation = { regenerateAccessCode:
    | { __typename: 'BootstrapCredentials', accessId: string, otp: string, id: string, expiresAt: string | null }
    | { __typename: 'DeviceDispensedToAnotherSubjectError', code: ErrorCode, message: string }
    | { __typename: 'DeviceNotDispensedError', code: ErrorCode, message: string }
    | { __typename: 'DeviceNotRegisteredError', code: ErrorCode, message: string }
    | { __typename: 'InternalServerError', code: ErrorCode, message: string }
    | { __typename: 'InvalidDeviceError', code: ErrorCode, message: string }
    | { __typename: 'InvalidInputError', code: ErrorCode, message: string, field: string }
    | { __typename: 'InvalidSubjectError', code: ErrorCode, message: string }
    | { __typename: 'MHealthSettingsNotFoundError', code: ErrorCode, message: string }
    | { __typename: 'MissingConnectionTypeError', code: ErrorCode, message: string }
    | { __typename: 'MissingVendorCodeError', code: ErrorCode, message: string }
    | { __typename: 'NoConnectionDeviceError', code: ErrorCode, message: string }
    | { __typename: 'PermissionDeniedError', code: ErrorCode, message: string }
    | { __typename: 'RateLimitedError', code: ErrorCode, message: string, retryAfterSeconds: number }
    | { __typename: 'StudyNotFoundError', code: ErrorCode, message: string }
    | { __typename: 'UnrecognizedUpstreamError', code: ErrorCode, message: string, upstreamStatus: number, upstreamCode: string | null }
    | { __typename: 'UpstreamUnavailableError', code: ErrorCode, message: string }
   };

export class TypedDocumentString<TResult, TVariables>
  extends String
  implements DocumentTypeDecoration<TResult, TVariables>
{
  __apiType?: NonNullable<DocumentTypeDecoration<TResult, TVariables>['__apiType']>;
  private value: string;
  public __meta__?: Record<string, any> | undefined;

  constructor(value: string, __meta__?: Record<string, any> | undefined) {
    super(value);
    this.value = value;
    this.__meta__ = __meta__;
  }

  override toString(): string & DocumentTypeDecoration<TResult, TVariables> {
    return this.value;
  }
}

export const RegenerateAccessCodeDocument = new TypedDocumentString(`
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
    `) as unknown as TypedDocumentString<RegenerateAccessCodeMutation, RegenerateAccessCodeMutationVariables>;