// graphql-codegen's configuration: the committed schema and this example's one operation in, typed
// operations out (src/gql/). `npm run codegen` writes them; `npm run codegen:check` fails on a difference.
import type { CodegenConfig } from "@graphql-codegen/cli";

const config: CodegenConfig = {
  schema: "../../schema.graphql",
  documents: ["src/operations.graphql"],
  ignoreNoDocuments: false,
  generates: {
    "src/gql/": {
      preset: "client",
      presetConfig: {
        fragmentMasking: false, // the operation uses inline fragments only; no masking helpers to import
      },
      config: {
        documentMode: "string", // a typed string: plain fetch sends it, no GraphQL runtime needed
        scalars: { DateTime: "string" }, // ISO 8601 on the wire; without this it is `unknown`
        enumsAsTypes: true, // string unions, not TS enums: nothing emitted at run time, strict-clean
        useTypeImports: true,
        strictScalars: true, // a new custom scalar fails generation instead of becoming `any`
      },
    },
  },
};

export default config;
