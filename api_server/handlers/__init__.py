"""HTTP handlers, one module per resource: parse, call one domain function, render JSON."""
