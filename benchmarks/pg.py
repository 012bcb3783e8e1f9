"""PostgreSQL helpers shared by the benchmarks that build their own database."""

from __future__ import annotations


def recreate_database(server_url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``server_url``; return its URL."""
    import psycopg

    base = server_url.rsplit("/", 1)[0]
    with psycopg.connect(server_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"
