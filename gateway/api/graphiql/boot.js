// Starts GraphiQL on the page's own data: the endpoint is the page's own URL; every visit opens on the
// sample mutation and its variables; the headers pane holds the token template until the user types
// their own headers, which are never written to the browser's storage (they hold the bearer token).
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("graphiql-config").textContent);
  var endpoint = window.location.origin + window.location.pathname;
  var fetcher = GraphiQL.createFetcher({ url: endpoint });

  // GraphiQL 3.8's history keeps each run's headers in localStorage whatever shouldPersistHeaders
  // says: the history's stores go through this storage, which drops their headers on the way in.
  var HISTORY_KEYS = { "graphiql:queries": true, "graphiql:favorites": true };
  function withoutHeaders(value) {
    try {
      return JSON.stringify(JSON.parse(value), function (key, item) {
        return key === "headers" ? undefined : item;
      });
    } catch (error) {
      return null; // unreadable: keep nothing rather than something that may hold a token
    }
  }
  var storage = {
    getItem: function (key) {
      return localStorage.getItem(key);
    },
    setItem: function (key, value) {
      var kept = HISTORY_KEYS[key] ? withoutHeaders(value) : value;
      if (kept === null) localStorage.removeItem(key);
      else localStorage.setItem(key, kept);
    },
    removeItem: function (key) {
      localStorage.removeItem(key);
    },
    get length() {
      return Object.keys(localStorage).filter(function (key) {
        return key.indexOf("graphiql:") === 0;
      }).length;
    },
    clear: function () {
      Object.keys(localStorage).forEach(function (key) {
        if (key.indexOf("graphiql:") === 0) localStorage.removeItem(key);
      });
    },
  };

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      query: config.query,
      variables: config.variables,
      defaultHeaders: config.headers,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false, // GraphiQL's default: a token in localStorage outlives the tab
      storage: storage,
      inputValueDeprecation: true,
    }),
  );
})();
