"""URL normalisation, the domain key and URL path prefixes (stage 4, exact URL dedup).

Two fetches of one page often differ only in spelling: ``HTTP://WWW.Example.com:80/a/?b=2&a=1#top``
and ``http://example.com/a?a=1&b=2`` are the same page. ``normalize_url`` maps both to one key;
the exact URL dedup (datatrove's ``ExactDedup*`` stages, keyed by :func:`url_dedup_key`) keeps one
document per key. The domain (host without ``www.``) is the unit of domain discovery (stage 6) and
URL path prefixes are what the human annotates.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from datatrove.data import Document

# query parameters that identify a visit, not a page
_TRACKING_PARAMS = frozenset(
    {"fbclid", "gclid", "dclid", "msclkid", "yclid", "sessionid", "session_id", "sid", "phpsessid"}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# characters left unescaped in a normalised path (RFC 3986 unreserved + sub-delims + ':@/')
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def normalize_url(url: str) -> str:
    """Return a canonical spelling of ``url`` (the exact-dedup key).

    Lower-cases scheme and host, drops ``www.``, default ports, the fragment, tracking parameters
    (``utm_*``, ``fbclid``, session ids, ...), sorts the remaining query parameters, re-escapes the
    path consistently, removes a trailing ``/`` (except the root) and ``index.html``-style names.
    A string that is not an absolute http(s) URL is returned stripped and lower-cased.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # e.g. a non-numeric port
        return url.lower()
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return url.lower()
    host = parts.hostname.lower().rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = quote(unquote(parts.path), safe=_PATH_SAFE) or "/"
    for index_name in ("index.html", "index.htm", "index.php"):
        if path.endswith("/" + index_name):
            path = path[: -len(index_name)]
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith("utm_") and k.lower() not in _TRACKING_PARAMS
    ]
    # http and https serve the same page on virtually every site: one key for both
    return urlunsplit(("http", netloc, path, urlencode(sorted(query)), ""))


def url_domain(url: str) -> str:
    """The domain of ``url``: its lower-cased host without ``www.`` ("" when there is none)."""
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def url_location(url: str) -> str:
    """``domain + path`` of ``url`` (no scheme, query or fragment): what annotations match."""
    norm = normalize_url(url)
    try:
        parts = urlsplit(norm)
    except ValueError:
        return norm
    return (parts.netloc + parts.path) if parts.netloc else norm


def path_prefixes(url: str, depth: int = 2) -> list[str]:
    """``domain/seg1/``, ``domain/seg1/seg2/`` ... (up to ``depth`` segments) of ``url``.

    Only directories are proposed: the last path segment (the page itself) is never a prefix.
    """
    location = url_location(url)
    domain, _, path = location.partition("/")
    segments = [s for s in path.split("/") if s][:-1] if path else []
    return [
        domain + "/" + "/".join(segments[:i]) + "/" for i in range(1, min(depth, len(segments)) + 1)
    ]


def matches_prefix(url: str, prefixes: list[str] | tuple[str, ...] | frozenset[str]) -> bool:
    """Whether ``url`` lies under one of ``prefixes`` (``domain`` or ``domain/path/`` strings)."""
    location = url_location(url)
    domain = location.split("/", 1)[0]
    for prefix in prefixes:
        prefix = prefix.strip().lower()
        if "/" not in prefix.rstrip("/"):  # a bare domain annotates the whole domain
            if domain == prefix.rstrip("/"):
                return True
        elif location.lower().startswith(
            prefix if prefix.endswith("/") else prefix + "/"
        ) or location.lower() == prefix.rstrip("/"):
            return True
    return False


def url_dedup_key(doc: Document) -> str:
    """Content getter for datatrove's exact dedup: the normalised URL of a document."""
    return doc.metadata.get("url_norm") or normalize_url(doc.metadata.get("url", ""))
