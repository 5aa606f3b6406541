"""The embedded services the whole suite relies on are up and answer."""


async def test_redis_answers(redis_client):
    assert await redis_client.ping() is True


async def test_migrations_apply_once(database_url, store):
    from core.migrate import migrate_url

    assert await migrate_url(database_url) == []
    tables = {
        r["tablename"] for r in await store.pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    }
    assert {"jobs", "job_events", "schema_migrations"} <= tables
