"""The CLI's command groups (``fedsynth data``, ``weights``, ``deploy``) and what every command
shares (:mod:`.common`); :mod:`fedsynth.cli` assembles them into the ``fedsynth`` command."""
