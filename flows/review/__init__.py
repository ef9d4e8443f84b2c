"""The review loop's web app: people decide disputed pairs, decisions become the versioned
`reviews` table (pipelines/reviews.py), and filters/reviews.py applies and measures them.

    prefmill review demo.r1.pairs@3 --reviewer alice        # http://127.0.0.1:8765/
    prefmill review demo.r1.pairs@3 --report                 # judge-vs-human agreement

Modules: app (FastAPI routes, security headers, server), session (queue state, leases, display
order, decisions), pages (view models for the templates), render (safe markdown), report
(Markdown report). Templates and static assets live beside them; nothing is loaded from a CDN.
"""
