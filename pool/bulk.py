"""Bulk inserts for rows that arrive by the million (the pool index): COPY on PostgreSQL, batched
INSERTs elsewhere.

Rows are dicts of field names to values; fields a row leaves out take the model's default, read from
the model itself, so a field added later (with a default) needs no change here.
"""

from __future__ import annotations

import json

from django.db import IntegrityError, connection, models, transaction


def _fields(model: type[models.Model], with_pk: bool = False) -> list[models.Field]:
    return [f for f in model._meta.concrete_fields if with_pk or not f.primary_key]


def ids_reserve(model: type[models.Model], count: int) -> list[int] | None:
    """``count`` primary keys from the table's sequence (PostgreSQL), so rows COPYed with them need no
    read-back; None elsewhere."""
    if connection.vendor != "postgresql" or count == 0:
        return None
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
            [table, model._meta.pk.column, count],
        )
        return [row[0] for row in cursor.fetchall()]


def _copy_rows(cursor, table: str, fields: list[models.Field], rows: list[dict], defaults: dict) -> None:
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    names = [f.attname for f in fields]
    json_names = [f.attname for f in fields if isinstance(f, models.JSONField)]
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    with cursor.copy(f"COPY {connection.ops.quote_name(table)} ({columns}) FROM STDIN") as copy:
        for row in rows:
            row = {**defaults, **row}
            for name in json_names:
                if row[name] is not None:
                    row[name] = dumps(row[name])
            copy.write_row([row[name] for name in names])


def rows_insert(model: type[models.Model], rows: list[dict], *, unique: str) -> bool:
    """Insert ``rows``, leaving out those whose ``unique`` field value is already taken; True when every
    row went in as given (ids included, when rows carry them).

    On PostgreSQL the rows are COPYed straight into the table; callers have already left out the rows
    they know exist, so a conflict means a concurrent writer: then the batch goes through a temporary
    table and ``INSERT ... ON CONFLICT DO NOTHING``.
    """
    if not rows:
        return True
    with_pk = model._meta.pk.attname in rows[0]
    fields = _fields(model, with_pk)
    defaults = {f.attname: f.get_default() for f in fields if not f.primary_key}
    table = model._meta.db_table
    if connection.vendor != "postgresql":
        objs = [model(**{**defaults, **row}) for row in rows]
        model.objects.bulk_create(objs, ignore_conflicts=True, batch_size=500)
        return False  # ids and conflicts unknown: the caller reads back what it needs
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _copy_rows(cursor, table, fields, rows, defaults)
        return True
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
    return False


def rows_where_in(model: type[models.Model], field: str, values: list, columns: list[str]) -> list[tuple]:
    """``columns`` of the rows whose ``field`` is one of ``values``. On PostgreSQL one array parameter
    (``= ANY(%s)``): thousands of placeholders cost more to build and parse than the lookup itself."""
    if not values:
        return []
    if connection.vendor != "postgresql":
        return list(model.objects.filter(**{f"{field}__in": values}).values_list(*columns))
    quote = connection.ops.quote_name
    meta = model._meta
    select = ", ".join(quote(meta.get_field(c).column) for c in columns)
    sql = f"SELECT {select} FROM {quote(meta.db_table)} WHERE {quote(meta.get_field(field).column)} = ANY(%s)"
    with connection.cursor() as cursor:
        cursor.execute(sql, [list(values)])
        return cursor.fetchall()


def rows_update(model: type[models.Model], rows: list[dict], fields: list[str]) -> int:
    """Set ``fields`` of each row (a dict with the pk and those fields) in one statement: on PostgreSQL an
    ``UPDATE ... FROM unnest(arrays)``, one parameter per column; ``bulk_update`` elsewhere (its ``CASE
    WHEN`` per row is what costs minutes at a million rows). Returns the number of rows given."""
    if not rows:
        return 0
    meta = model._meta
    pk = meta.pk.attname
    if connection.vendor != "postgresql":
        objs = [model(**{pk: row[pk], **{f: row[f] for f in fields}}) for row in rows]
        model.objects.bulk_update(objs, [meta.get_field(f).name for f in fields], batch_size=1000)
        return len(rows)
    quote = connection.ops.quote_name
    columns = [meta.pk, *(meta.get_field(f) for f in fields)]
    # A foreign key's db_type is its target's column type; arrays of varchar(n) cast like varchar(n).
    arrays = ", ".join(f"%s::{c.cast_db_type(connection)}[]" for c in columns)
    names = ", ".join(quote(c.column) for c in columns)
    sets = ", ".join(f"{quote(c.column)} = v.{quote(c.column)}" for c in columns[1:])
    table = quote(meta.db_table)
    sql = (
        f"UPDATE {table} SET {sets} FROM unnest({arrays}) AS v({names}) "
        f"WHERE {table}.{quote(meta.pk.column)} = v.{quote(meta.pk.column)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [[row[c.attname] for row in rows] for c in columns])
    return len(rows)
