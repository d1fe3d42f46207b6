"""transched's service: the REST API, the SQL study store, the Ray study driver and the CLI."""
