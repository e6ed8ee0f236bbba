"""No-op ClientApp/ServerApp: no torch, no training; the same round loop shape as fedsynth's
(one train message per node per round, replies polled every ``poll-interval`` seconds)."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    while len(list(grid.get_node_ids())) < int(rc["clients"]):
        time.sleep(0.05)
    nodes = sorted(grid.get_node_ids())
    arrays = ArrayRecord([np.zeros(10_000, dtype=np.float32)])
    walls = []
    for _ in range(int(rc["rounds"])):
        t0 = time.perf_counter()
        ids = set(grid.push_messages([Message(RecordDict({"arrays": arrays}), message_type="train", dst_node_id=n)
                                      for n in nodes]))
        while ids:
            ids -= {m.metadata.reply_to_message_id for m in grid.pull_messages(list(ids))}
            if ids:
                time.sleep(float(rc["poll-interval"]))
        walls.append(time.perf_counter() - t0)
    with open(str(rc["out"]), "w") as f:
        json.dump(walls, f)
