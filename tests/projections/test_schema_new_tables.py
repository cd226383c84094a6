"""A projection version built before a release added a mirrored table still serves: migrate
(and a swap) create the missing table empty, so its `live` view exists."""

from __future__ import annotations

import psycopg

from launcher.services._process import run_async
from projections import schema as db


def test_migrate_adds_mirror_tables_an_older_version_lacks(database_url: str) -> None:
    async def go() -> list[str]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            active = await db.migrate(conn)
            await conn.execute(f"DROP VIEW {db.LIVE}.product_features")
            await conn.execute(f'DROP TABLE "{active}".product_features')
            await conn.commit()
            await db.migrate(conn)
            await conn.commit()
            cur = await conn.execute(f"SELECT count(*) FROM {db.LIVE}.product_features")
            assert await cur.fetchone() == (0,)
            cur = await conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                (active, "product_features"),
            )
            return [str(r[0]) for r in await cur.fetchall()]

    indexes = run_async(go)
    assert len(indexes) == 3  # primary key, customer, refs
