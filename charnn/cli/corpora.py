"""`charnn corpora`: the catalog of downloadable corpora, and which are already in the cache."""

from __future__ import annotations

import json

import typer

from charnn.cli.options import Json
from charnn.cli.output import err, user_errors, writing_results


def corpora(as_json: Json = False):
    """List the catalog of public corpora `charnn train NAME` downloads, and which are already here."""
    from charnn.data.cache import cache_root
    from charnn.data.catalog import catalog_path, listing

    with user_errors():
        entries = listing()
    with writing_results():
        if as_json:
            typer.echo(json.dumps({"catalog": str(catalog_path()), "cache": str(cache_root()), "corpora": entries}))
            return
        typer.echo(f"{'name':<22} {'download':>10}  {'here':<4}  {'sha256':<8}  description")
        for e in entries:
            size = f"{e['size'] / 1e6:,.1f} MB" if e.get("size") else "?"
            typer.echo(f"{e['name']:<22} {size:>10}  {'yes' if e['downloaded'] else '-':<4}  "
                       f"{'pinned' if e.get('sha256') else 'none':<8}  {e.get('description') or ''}")
    err.print(f"cache: {cache_root()} (set CHARNN_CACHE to move it); train one with: charnn train NAME",
              highlight=False)
