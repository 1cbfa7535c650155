"""The REST API: parse, call a service, render. No business rules here."""
