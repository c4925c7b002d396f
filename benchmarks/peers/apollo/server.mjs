// The Apollo peer of scripts/bench's scenario 5: Apollo Server 5 + RESTDataSource serving the
// gateway's `regenerateAccessCode` mutation (the committed schema.graphql) in front of the same
// upstream. Only the success path is mapped; any upstream failure becomes UpstreamUnavailableError.
//
//   PORT=4000 UPSTREAM_URL=http://127.0.0.1:8081 node server.mjs
import { readFileSync } from "node:fs";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { RESTDataSource } from "@apollo/datasource-rest";

const typeDefs = readFileSync(new URL("../../../schema.graphql", import.meta.url), "utf8");
const upstream = process.env.UPSTREAM_URL;
const port = Number(process.env.PORT ?? "4000");

class ClinicalOne extends RESTDataSource {
  baseURL = upstream;

  regenerate({ studyId, mode, subjectId, inventoryId, mSubjectId }) {
    const path =
      `ec-ors-svc/rest/v1.0/studies/${encodeURIComponent(studyId)}/${mode.toLowerCase()}` +
      `/subjects/${encodeURIComponent(subjectId)}/devices/${encodeURIComponent(inventoryId)}/access-code`;
    return this.put(path, { params: { mSubjectId } });
  }
}

const resolvers = {
  Query: {
    gateway: () => ({ version: "apollo-peer", backend: "UPSTREAM", otpLifetimeSeconds: null }),
  },
  Mutation: {
    regenerateAccessCode: async (_, { input }, { clinicalOne }) => {
      try {
        const { accessId, otp, id } = await clinicalOne.regenerate(input);
        return { __typename: "BootstrapCredentials", accessId, otp, id, expiresAt: null };
      } catch {
        return { __typename: "UpstreamUnavailableError", code: "UPSTREAM_UNAVAILABLE", message: "Upstream service unavailable" };
      }
    },
  },
  RegenerateAccessCodeResult: { __resolveType: (result) => result.__typename },
  Error: { __resolveType: (result) => result.__typename },
};

const server = new ApolloServer({ typeDefs, resolvers });
const { url } = await startStandaloneServer(server, {
  listen: { host: "127.0.0.1", port },
  context: async () => ({ clinicalOne: new ClinicalOne() }),
});
console.log(`apollo peer at ${url}, upstream ${upstream}`);
