"""Redis clients as every role opens them (core/redis.py), against the real server."""

from __future__ import annotations

from redis.driver_info import DriverInfo

from core.redis import DRIVER_INFO, bytes_twin, redis_client


async def test_every_connection_shares_one_driver_info(redis_url):
    """redis-py otherwise builds a DriverInfo for each connection it opens, reading its own version from the installed
    packages' metadata each time (~1 ms of CPU a connection)."""
    client = redis_client(redis_url, pool_size=4)
    twin = bytes_twin(client)
    opened = []
    try:
        for pool in (client.connection_pool, twin.connection_pool):
            opened += [(pool, await pool.get_connection()) for _ in range(3)]
        assert await client.ping() and await twin.ping()
        assert isinstance(DRIVER_INFO, DriverInfo)
        assert all(connection.driver_info is DRIVER_INFO for _, connection in opened)
    finally:
        for pool, connection in opened:
            await pool.release(connection)
        await twin.aclose()
        await client.aclose()
