"""The HTTP server and its dashboard, and the self-contained HTML report built from the same views."""
