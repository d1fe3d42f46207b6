"""One router module per resource; `service.api.create_app` includes each module's `router`."""
