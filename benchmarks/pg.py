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


def insert_select(model, exprs: dict[str, str], from_sql: str) -> int:
    """INSERT INTO model's table SELECT ... ``from_sql`` (e.g. over generate_series): bulk rows without
    a Python loop. Columns not in ``exprs`` get the field default, so fields other apps add later with
    a default do not break the benchmarks."""
    from django.db import connection, models

    columns, select, params = [], [], []
    for field in model._meta.concrete_fields:
        if field.column in exprs:
            select.append(exprs[field.column])
        elif field.primary_key:
            continue
        elif field.has_default():
            select.append("%s")
            params.append(field.get_db_prep_save(field.get_default(), connection))
        elif field.null:
            select.append("NULL")
        elif isinstance(field, models.CharField | models.TextField):
            select.append("''")
        else:
            raise RuntimeError(f"The benchmark does not know how to fill {model.__name__}.{field.name}.")
        columns.append(field.column)
    table = model._meta.db_table
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)  # "offset" is a keyword
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({quoted}) SELECT {', '.join(select)} {from_sql}", params)
        count = cursor.rowcount
        if model._meta.pk.column in exprs:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
    return count
