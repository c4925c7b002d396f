"""GraphiQL, served whole by the gateway: no request leaves its origin.

- `page`:        the page (`page.html`, `boot.js`), opened on the sample mutation, its headers pane on the
                 token template, under a Content-Security-Policy of 'self' and the page's own script.
- `assets/`:     React 18 and GraphiQL 3 at pinned versions, served with long cache headers under
                 versioned paths; `assets.json` pins them with their SRI hashes.
- `update`:      `scripts/update-graphiql`, which fetches them again from the npm registry.
"""
