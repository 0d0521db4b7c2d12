"""The query API: app factory, routers, auth, guard, cache, docs, static dashboard."""
