// Starts GraphiQL on the page's own data: the endpoint is the page's own URL; every visit opens on the
// sample mutation and its variables; the headers pane holds the token template until the user's own
// headers (kept in the browser's storage) replace it.
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("graphiql-config").textContent);
  var endpoint = window.location.origin + window.location.pathname;
  var fetcher = GraphiQL.createFetcher({ url: endpoint });
  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      query: config.query,
      variables: config.variables,
      defaultHeaders: config.headers,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    }),
  );
})();
