"""Web views on Faust's server."""
