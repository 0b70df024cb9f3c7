"""The operator's HTTP API: the app and its routes, the views it serves, its OpenAPI document."""
