"""fedlm on Flower's Deployment Engine (the ``fedlm[flower]`` extra, flwr 1.42).

A deployed round is the simulator's round split across machines, with no second copy of
any algorithm: the ServerApp (:mod:`.server_app`) runs ``Simulation.begin_round`` and
``Simulation.finish_round`` over a server-side simulation that holds no client data
(:mod:`.parts`); each ClientApp (:mod:`.client_app`) runs ``Simulation.client_round``
over its own data only. Round plans, broadcasts, updates and metrics travel as Flower
Messages (:mod:`.wire`); secure aggregation drives the same SecAgg+ state machines over
its own message types (:mod:`.secagg_remote`). :mod:`.app_writer` writes a Flower app
directory, :mod:`.launcher` runs a SuperLink and SuperNodes on loopback with TLS and node
authentication (:mod:`.credentials`), each SuperNode served by one long-lived ClientApp
process (:mod:`.worker`). Whatever a node sends is parsed with bounds (:mod:`.checks`),
attributed to the node the transport names (:mod:`.messaging`), and a node keeps its
files in a format that cannot run code (:mod:`.node_state`).

Only this package's modules that run inside Flower import ``flwr``; importing
``fedlm.deploy`` itself needs nothing beyond fedlm.
"""
