"""The HTTP side: the route handlers (routes.py: admission of a prediction, models, health), reading a request's
body, form and key (forms.py), the admin API for keys (admin.py), the OpenAPI description (openapi.py,
openapi_schemas.py) and the try-it page (web.py and static/)."""
