"""The command line: parse, call the API, render. No business rules here."""
