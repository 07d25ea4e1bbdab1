"""Outbound mail: replies from records and ticket acknowledgements, queued and delivered."""
