"""The Flower adapter -- the only code in fedsynth that imports ``flwr``.

* :mod:`.server_app` -- the ServerApp: greets the nodes, then runs the same round loop as the
  in-process engine (:class:`fedsynth.fed.engine.Federation`) with a pool whose clients are
  SuperNodes, writing a normal run directory through :func:`fedsynth.fed.run.run_experiment`.
* :mod:`.client_app` -- the ClientApp: message in, :func:`.node.handle` (in the warm worker if
  there is one), message out. Imports neither torch nor fedsynth's models.
* :mod:`.node` -- a node's work in plain NumPy/JSON terms: :func:`fedsynth.fed.client.client_round`.
* :mod:`.worker` -- the warm worker beside each SuperNode (torch imported once).
* :mod:`.secagg` -- ``fed.secure-aggregation``: fedsynth's round through Flower's SecAgg+
  (``SecAggPlusWorkflow`` + ``secaggplus_mod``), the update codec, the relay strategy.
* :mod:`.deploy` -- TLS material, node keys, Flower's environment, starting a run
  (``fedsynth deploy``; the tests' and benchmarks' local federation is ``tools/local_federation.py``).
* ``app/`` -- the Flower app folder ``flwr run`` packs.

Nothing is imported here: Flower loads ``client_app`` in a new process for every message.
"""
