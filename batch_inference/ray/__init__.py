"""Ray integrations: a Serve deployment per host (serve) and a Ray Data callable (data); each imports Ray only when used."""
