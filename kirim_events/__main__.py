"""``python -m kirim_events``: the same CLI as the ``kirim-events`` script."""

from kirim_events.cli import main

main()
