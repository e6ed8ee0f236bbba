"""Test, benchmark and documentation tooling: not part of the installed ``fedsynth`` package.

Importable from the repository root (pytest adds it to ``sys.path``; ``benchmarks/*.py`` add it
themselves):

* :mod:`.browser` -- report.html in headless Chromium; the documentation's screenshots.
* :mod:`.local_federation` -- a SuperLink and SuperNodes on 127.0.0.1 (:class:`LocalFederation`),
  and stopping processes by PID.
"""
