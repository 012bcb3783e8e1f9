"""Bulk inserts for rows that arrive by the million (the pool index): COPY on PostgreSQL, batched
INSERTs elsewhere.

Rows are dicts of field names to values; fields a row leaves out take the model's default, read from
the model itself, so a field added later (with a default) needs no change here.
"""

from __future__ import annotations

import json

from django.db import IntegrityError, connection, models, transaction


def _fields(model: type[models.Model]) -> list[models.Field]:
    return [f for f in model._meta.concrete_fields if not f.primary_key]


def _copy_rows(cursor, table: str, fields: list[models.Field], rows: list[dict], defaults: dict) -> None:
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    json_fields = {f.attname for f in fields if isinstance(f, models.JSONField)}
    with cursor.copy(f"COPY {connection.ops.quote_name(table)} ({columns}) FROM STDIN") as copy:
        for row in rows:
            values = []
            for f in fields:
                value = row.get(f.attname, defaults[f.attname])
                if f.attname in json_fields and value is not None:
                    value = json.dumps(value, ensure_ascii=False)
                values.append(value)
            copy.write_row(values)


def rows_insert(model: type[models.Model], rows: list[dict], *, unique: str) -> None:
    """Insert ``rows``, leaving out those whose ``unique`` field value is already taken.

    On PostgreSQL the rows are COPYed straight into the table; callers have already left out the rows
    they know exist, so a conflict means a concurrent writer: then the batch goes through a temporary
    table and ``INSERT ... ON CONFLICT DO NOTHING``.
    """
    if not rows:
        return
    fields = _fields(model)
    defaults = {f.attname: f.get_default() for f in fields}
    table = model._meta.db_table
    if connection.vendor != "postgresql":
        objs = [model(**{**defaults, **row}) for row in rows]
        model.objects.bulk_create(objs, ignore_conflicts=True, batch_size=500)
        return
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _copy_rows(cursor, table, fields, rows, defaults)
        return
    except IntegrityError:
        pass
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    staging = f"loupe_staging_{table}"
    unique_column = connection.ops.quote_name(model._meta.get_field(unique).column)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {staging}")
        cursor.execute(
            f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS "
            f"SELECT {columns} FROM {connection.ops.quote_name(table)} WITH NO DATA"
        )
        _copy_rows(cursor, staging, fields, rows, defaults)
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(table)} ({columns}) SELECT {columns} FROM {staging} "
            f"ON CONFLICT ({unique_column}) DO NOTHING"
        )
