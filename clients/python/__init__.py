"""The Python client of Aster: typed stubs for every service behind one channel.

async with AsterClient("localhost:50051") as aster:
    agent = await aster.create_agent("Helper", instructions="Be brief.")
    async for agent in aster.iter_agents(filter="labels.team=ml"):
        print(agent.id)
"""

from aster.client.client import AsterClient

__all__ = ["AsterClient"]
